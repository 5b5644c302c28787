#include "threads.h"

#include <atomic>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastlrp {
namespace cpu {

namespace {
std::atomic<int> g_num_threads{0};  // 0: not set yet, use OpenMP's default
}  // namespace

void set_num_threads(int n) { g_num_threads.store(n > 0 ? n : 0); }

int get_num_threads() {
    const int n = g_num_threads.load();
    if (n > 0) return n;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

bool has_openmp() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

}  // namespace cpu
}  // namespace fastlrp
