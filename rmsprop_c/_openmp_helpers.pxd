# One shim for the OpenMP runtime calls: a build without OpenMP gets serial stand-ins, so the
# rest of the Cython code never needs an #ifdef.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define RC_OPENMP_ENABLED 1
    /* Orphaned: binds to the parallel region of the caller (never inside a worksharing loop). */
    static inline void rc_omp_barrier(void) { _Pragma("omp barrier") }
    #else
    #define RC_OPENMP_ENABLED 0
    static inline int omp_get_max_threads(void) { return 1; }
    static inline int omp_get_thread_num(void) { return 0; }
    static inline int omp_get_num_procs(void) { return 1; }
    static inline int omp_get_num_threads(void) { return 1; }
    static inline void rc_omp_barrier(void) {}
    #endif
    """
    bint RC_OPENMP_ENABLED
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    int omp_get_num_procs() noexcept nogil
    int omp_get_num_threads() noexcept nogil
    void rc_omp_barrier() noexcept nogil
