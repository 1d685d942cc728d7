// Tensor: a typed, shaped view into memory owned elsewhere (an Arena). Row-major, contiguous.
// Arena: a chained bump allocator. reset() rewinds it so the next pass reuses the same blocks:
// after the first micro-batch a training step allocates nothing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/check.h"

namespace ff {

enum class DType : uint8_t { f32, bf16 };
enum class Device : uint8_t { cpu, cuda };

inline size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }
inline const char* dtype_name(DType t) { return t == DType::f32 ? "f32" : "bf16"; }

struct Shape {
  static constexpr int kMaxDims = 4;
  int64_t dims[kMaxDims] = {0, 0, 0, 0};
  int rank = 0;

  Shape() = default;
  Shape(std::initializer_list<int64_t> d);
  static Shape from(const std::vector<int64_t>& d);
  int64_t operator[](int i) const { return dims[i]; }
  int64_t numel() const;
  std::vector<int64_t> vec() const { return {dims, dims + rank}; }
  std::string str() const;
  bool operator==(const Shape& o) const;
};

struct Tensor {
  void* ptr = nullptr;
  Shape shape;
  DType dtype = DType::f32;
  Device device = Device::cpu;

  int64_t numel() const { return shape.numel(); }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  float* f32() const {
    FF_CHECK(dtype == DType::f32, "tensor is %s, f32 expected", dtype_name(dtype));
    return static_cast<float*>(ptr);
  }
  bf16_t* bf16() const {
    FF_CHECK(dtype == DType::bf16, "tensor is %s, bf16 expected", dtype_name(dtype));
    return static_cast<bf16_t*>(ptr);
  }
  bool empty() const { return ptr == nullptr; }
};

class Arena {
 public:
  explicit Arena(size_t block_bytes = size_t(64) << 20) : block_bytes_(block_bytes) {}
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Arena(Arena&&) = default;
  Arena& operator=(Arena&&) = default;

  // Contents are unspecified: callers write before they read.
  Tensor alloc(const Shape& shape, DType dtype = DType::f32);
  float* alloc_f32(int64_t n) { return alloc(Shape{n}).f32(); }
  // Rewind: the next allocations reuse the same memory in the same order.
  void reset();
  size_t bytes_reserved() const;  // memory held
  size_t bytes_used() const;      // high-water mark of the current pass

 private:
  struct Block {
    std::unique_ptr<std::byte[]> base;  // 64-byte aligned start inside raw
    std::byte* data = nullptr;
    size_t size = 0;
  };
  std::vector<Block> blocks_;
  size_t block_bytes_;
  size_t current_ = 0;  // index of the block being filled
  size_t offset_ = 0;   // bytes used in that block
  size_t used_ = 0;
};

}  // namespace ff
