// Shared pieces of the compiled benchmarks (bench_gemm, bench_sparsify): argument parsing,
// CUDA-event timing with an L2 flush, median/p10/p90, JSON lines, a seeded device RNG fill.
//
// Timing: each timed run is preceded (outside its event pair) by a write of a buffer twice the L2
// size, so the run's inputs come from HBM, as they do inside a real FFN step.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace sp24bench {

#define SP24B_CUDA(expr)                                                                             \
  do {                                                                                               \
    cudaError_t e_ = (expr);                                                                         \
    if (e_ != cudaSuccess)                                                                           \
      throw std::runtime_error(std::string(#expr) + " failed: " + cudaGetErrorString(e_));          \
  } while (0)

// --key value arguments; every key must be known (a typo is an error, not a silent default).
class Args {
 public:
  Args(int argc, char** argv, std::map<std::string, std::string> defaults, const char* usage)
      : kv_(std::move(defaults)) {
    for (int i = 1; i < argc; ++i) {
      std::string k = argv[i];
      if (k == "--help" || k == "-h") {
        std::printf("%s\n", usage);
        std::exit(0);
      }
      if (k.rfind("--", 0) != 0 || i + 1 >= argc || kv_.count(k.substr(2)) == 0) {
        std::fprintf(stderr, "unknown or incomplete argument %s\n%s\n", k.c_str(), usage);
        std::exit(2);
      }
      kv_[k.substr(2)] = argv[++i];
    }
  }
  std::string str(const std::string& k) const { return kv_.at(k); }
  // --dtype: bf16 or fp16 (exits with a message otherwise).
  std::string dtype() const {
    const std::string d = kv_.at("dtype");
    if (d != "bf16" && d != "fp16") {
      std::fprintf(stderr, "--dtype must be bf16 or fp16, got '%s'\n", d.c_str());
      std::exit(2);
    }
    return d;
  }
  long long num(const std::string& k) const { return parse_int(kv_.at(k), k); }
  std::vector<long long> list(const std::string& k) const {
    std::vector<long long> out;
    std::stringstream ss(kv_.at(k));
    std::string item;
    while (std::getline(ss, item, ',')) out.push_back(parse_int(item, k));
    return out;
  }
  static long long parse_int(const std::string& s, const std::string& k) {
    char* end = nullptr;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || v <= 0) {
      std::fprintf(stderr, "--%s: expected positive integers, got '%s'\n", k.c_str(), s.c_str());
      std::exit(2);
    }
    return v;
  }

 private:
  std::map<std::string, std::string> kv_;
};

inline double percentile(std::vector<double> v, double q) {  // linear interpolation, as numpy
  std::sort(v.begin(), v.end());
  const double pos = (v.size() - 1) * q / 100.0;
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

struct Stats {
  double median_us, p10_us, p90_us;
};

class Timer {
 public:
  Timer(int warmup, int reps, cudaStream_t stream) : warmup_(warmup), reps_(reps), stream_(stream) {
    int dev = 0, l2 = 0;
    SP24B_CUDA(cudaGetDevice(&dev));
    SP24B_CUDA(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    flush_bytes_ = std::max<size_t>(2 * static_cast<size_t>(l2), 1 << 20);
    SP24B_CUDA(cudaMalloc(&flush_, flush_bytes_));
    SP24B_CUDA(cudaEventCreate(&start_));
    SP24B_CUDA(cudaEventCreate(&stop_));
  }
  ~Timer() {
    cudaFree(flush_);
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  size_t flush_bytes() const { return flush_bytes_; }

  Stats run(const std::function<void()>& fn) {
    for (int i = 0; i < warmup_; ++i) fn();
    SP24B_CUDA(cudaStreamSynchronize(stream_));
    std::vector<double> us;
    for (int i = 0; i < reps_; ++i) {
      SP24B_CUDA(cudaMemsetAsync(flush_, i & 0xff, flush_bytes_, stream_));  // evict the inputs from L2
      SP24B_CUDA(cudaEventRecord(start_, stream_));
      fn();
      SP24B_CUDA(cudaEventRecord(stop_, stream_));
      SP24B_CUDA(cudaEventSynchronize(stop_));
      float ms = 0.f;
      SP24B_CUDA(cudaEventElapsedTime(&ms, start_, stop_));
      us.push_back(ms * 1e3);
    }
    return {percentile(us, 50), percentile(us, 10), percentile(us, 90)};
  }

 private:
  int warmup_, reps_;
  cudaStream_t stream_;
  void* flush_ = nullptr;
  size_t flush_bytes_ = 0;
  cudaEvent_t start_{}, stop_{};
};

// One JSON object per line, to stdout or to --out FILE (appended).
class JsonLines {
 public:
  explicit JsonLines(const std::string& path) {
    if (path != "-") {
      file_.open(path, std::ios::app);
      if (!file_) throw std::runtime_error("cannot open --out " + path);
    }
  }
  JsonLines& kv(const std::string& k, const std::string& v) {
    sep();
    line_ << '"' << k << "\":\"" << escape(v) << '"';
    return *this;
  }
  JsonLines& kv(const std::string& k, double v) {
    sep();
    if (std::isfinite(v)) line_ << '"' << k << "\":" << v; else line_ << '"' << k << "\":null";
    return *this;
  }
  JsonLines& kv(const std::string& k, long long v) {
    sep();
    line_ << '"' << k << "\":" << v;
    return *this;
  }
  void stats(const Stats& s) { kv("median_us", s.median_us).kv("p10_us", s.p10_us).kv("p90_us", s.p90_us); }
  void end() {
    std::string s = "{" + line_.str() + "}\n";
    if (file_.is_open()) file_ << s << std::flush; else std::cout << s << std::flush;
    line_.str("");
    first_ = true;
  }

 private:
  void sep() {
    if (!first_) line_ << ',';
    first_ = false;
    line_.precision(6);
  }
  static std::string escape(const std::string& s) {
    std::string o;
    for (char c : s) {
      if (c == '"' || c == '\\') o += '\\';
      if (c == '\n') { o += "\\n"; continue; }
      o += c;
    }
    return o;
  }
  std::ofstream file_;
  std::ostringstream line_;
  bool first_ = true;
};

// Seeded uniform(-1, 1) fill (a hash of the index: same values on every run and device).
template <typename T>
__global__ void fill_kernel(T* p, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint64_t z = (static_cast<uint64_t>(i) + seed * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) / static_cast<float>(1ull << 24) * 2.f - 1.f;
    p[i] = static_cast<T>(u * scale);
  }
}

template <typename T>
void fill(T* p, int64_t n, uint64_t seed, float scale, cudaStream_t s) {
  fill_kernel<T><<<1024, 256, 0, s>>>(p, n, seed, scale);
  SP24B_CUDA(cudaGetLastError());
}

inline std::string gpu_name() {
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return "unknown";
  return prop.name;
}

}  // namespace sp24bench
