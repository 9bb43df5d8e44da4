# The C side the driver calls: the kernel ABI of src/rmsprop_kernels.h, and small C helpers
# for what Cython cannot say directly (a prefetch hint, a monotonic clock, the floating-point
# mode of a thread, fork tracking, the process-wide thread limit threadpoolctl sets).

cdef extern from "rmsprop_kernels.h" nogil:
    ctypedef struct rc_hyper:
        double lr
        double alpha
        double one_minus_alpha
        double eps_inside
        double eps_outside
        double weight_decay
        double lr_weight_decay
        double momentum
        double bias_correction
        double grad_scale
        double clip_value
        double norm_coefficient
        int preprocess
        int maximize
        int nesterov

    ctypedef struct rc_buffers:
        void *param
        const void *grad
        void *square_avg
        void *momentum_buffer
        void *grad_avg
        void *max_square_avg
        const rc_lowp *lowp

    ctypedef void (*rc_kernel_fn)(const rc_hyper *hyper, const rc_buffers *buffers,
                                  Py_ssize_t start, Py_ssize_t stop) noexcept nogil
    ctypedef void (*rc_lowp_fn)(rc_kernel_fn kernel, const rc_hyper *hyper,
                                const rc_buffers *buffers, Py_ssize_t size, Py_ssize_t start,
                                Py_ssize_t stop) noexcept nogil
    ctypedef struct rc_lowp:
        rc_lowp_fn run
        int param_dtype
        int grad_dtype
        int state_dtype
        int copy_dtype
        int stochastic
        void *param_copy
        uint64_t keys[5]

    ctypedef int (*rc_nonfinite_fn)(const rc_hyper *hyper, const void *grad, Py_ssize_t size,
                                    Py_ssize_t first, Py_ssize_t stop, int mode,
                                    void *out) noexcept nogil

    enum:
        RC_WD_NONE
        RC_WD_COUPLED
        RC_WD_DECOUPLED
        RC_MOM_NONE
        RC_MOM_LR_OUTSIDE
        RC_MOM_LR_INSIDE
        RC_N_VARIANTS
        RC_N_TRAFFIC_VARIANTS
        RC_SIMD_BASELINE
        RC_SIMD_AVX2
        RC_SIMD_AVX512
        RC_N_SIMD
        RC_FLOAT32
        RC_FLOAT64
        RC_BFLOAT16
        RC_FLOAT16
        RC_NORM_CHUNK
        RC_NORM_LANES
        RC_READ_NORM2
        RC_READ_NORM_INF
        RC_READ_PREPROCESS

    int rc_variant(int weight_decay_mode, int centered, int bias_correction, int amsgrad,
                   int momentum_mode)
    int rc_traffic_variant(int centered, int amsgrad, int momentum_mode)
    rc_kernel_fn rc_get_kernel(int simd, int dtype, int variant)
    rc_kernel_fn rc_get_traffic_kernel(int simd, int dtype, int traffic_variant)
    rc_nonfinite_fn rc_get_nonfinite_check(int simd, int dtype)
    rc_lowp_fn rc_get_lowp_runner(int simd, int traffic)
    int rc_simd_built(int simd)
    int rc_simd_supported(int simd)


cdef extern from *:
    """
    #include <time.h>
    #include <errno.h>
    #include <fcntl.h>
    #include <unistd.h>
    #include <pthread.h>
    #if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
    #include <xmmintrin.h>
    #define RC_HAVE_MXCSR 1
    #else
    #include <fenv.h>
    #endif

    #ifndef RC_BUILD_COMPILER
    #define RC_BUILD_COMPILER "unknown"
    #endif
    #ifndef RC_BUILD_FLAGS
    #define RC_BUILD_FLAGS "unknown"
    #endif
    #ifndef RC_BUILD_SIMD
    #define RC_BUILD_SIMD "baseline"
    #endif

    static inline void rc_prefetch(const void *address) {
    #if defined(__GNUC__)
        __builtin_prefetch(address);
    #endif
    }

    static inline long long rc_now_ns(void) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    }

    /* Floating-point mode (FTZ/DAZ, rounding, exception masks; not the sticky flags).
     * Per thread: OpenMP workers do not inherit the caller's, so each adopts it. */
    #ifdef RC_HAVE_MXCSR
    #define RC_MXCSR_FLAGS 0x3Fu
    static inline unsigned int rc_fp_mode(void) { return _mm_getcsr() & ~RC_MXCSR_FLAGS; }
    static inline unsigned int rc_fp_mode_enter(unsigned int mode) {
        unsigned int previous = _mm_getcsr();
        if ((previous & ~RC_MXCSR_FLAGS) != mode) _mm_setcsr(mode | (previous & RC_MXCSR_FLAGS));
        return previous;
    }
    static inline void rc_fp_mode_leave(unsigned int previous) {
        if (_mm_getcsr() != previous) _mm_setcsr(previous);
    }
    #else
    static inline unsigned int rc_fp_mode(void) { return (unsigned int)fegetround(); }
    static inline unsigned int rc_fp_mode_enter(unsigned int mode) {
        unsigned int previous = (unsigned int)fegetround();
        if (previous != mode) fesetround((int)mode);
        return previous;
    }
    static inline void rc_fp_mode_leave(unsigned int previous) {
        if ((unsigned int)fegetround() != previous) fesetround((int)previous);
    }
    #endif

    /* Fork tracking through pthread_atfork, so a fork by any path (os.fork, ctypes, a C
     * library) is seen. libgomp hangs in a child whose parent had its thread pool running;
     * a parent with a single thread at the fork had no pool, so its child may go parallel. */
    static volatile int rc_fork_generation = 0;
    static volatile int rc_parallel_unsafe = 0;
    static int rc_threads_at_fork = 0;

    static int rc_thread_count(void) {
        /* Field 20 of /proc/self/stat; 0 when unknown. No allocation: runs in atfork. */
        char text[1024];
        int fd = open("/proc/self/stat", O_RDONLY);
        if (fd < 0) return 0;
        ssize_t length = read(fd, text, sizeof(text) - 1);
        close(fd);
        if (length <= 0) return 0;
        text[length] = 0;
        char *cursor = text;
        for (char *c = text; *c; ++c) if (*c == ')') cursor = c;   /* the name may hold spaces */
        int field = 2;
        for (; *cursor && field < 20; ++cursor) if (*cursor == ' ') ++field;
        int count = 0;
        for (; *cursor >= '0' && *cursor <= '9'; ++cursor) count = count * 10 + (*cursor - '0');
        return count;
    }
    static void rc_atfork_prepare(void) { rc_threads_at_fork = rc_thread_count(); }
    static void rc_atfork_child(void) {
        rc_fork_generation += 1;
        if (rc_threads_at_fork != 1) rc_parallel_unsafe = 1;
    }
    static int rc_install_atfork(void) {
        return pthread_atfork(rc_atfork_prepare, NULL, rc_atfork_child);
    }

    /* The process-wide limit for n_threads=None: the same for every calling thread (an
     * OpenMP thread-count setting is per thread). threadpoolctl sets it through these two
     * exported functions (see _threads.pxi). */
    static int rc_process_thread_limit = 1;
    extern "C" __attribute__((visibility("default"))) int rmsprop_c_get_num_threads(void) {
        return rc_process_thread_limit;
    }
    extern "C" __attribute__((visibility("default"))) void rmsprop_c_set_num_threads(int n) {
        rc_process_thread_limit = n < 1 ? 1 : n;
    }
    """
    const char *RC_BUILD_COMPILER
    const char *RC_BUILD_FLAGS
    const char *RC_BUILD_SIMD
    void rc_prefetch(const void *address) noexcept nogil
    long long rc_now_ns() noexcept nogil
    unsigned int rc_fp_mode() noexcept nogil
    unsigned int rc_fp_mode_enter(unsigned int mode) noexcept nogil
    void rc_fp_mode_leave(unsigned int previous) noexcept nogil
    int rc_fork_generation
    int rc_parallel_unsafe
    int rc_install_atfork() noexcept
    int rc_process_thread_limit
    int rmsprop_c_get_num_threads() noexcept nogil
    void rmsprop_c_set_num_threads(int n) noexcept nogil
