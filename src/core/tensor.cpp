#include "core/tensor.h"

#include <algorithm>

namespace ff {

Shape::Shape(std::initializer_list<int64_t> d) {
  FF_CHECK(d.size() <= kMaxDims, "at most %d dims", kMaxDims);
  for (int64_t x : d) dims[rank++] = x;
}

Shape Shape::from(const std::vector<int64_t>& d) {
  FF_CHECK(d.size() <= kMaxDims, "at most %d dims, got %zu", kMaxDims, d.size());
  Shape s;
  for (int64_t x : d) s.dims[s.rank++] = x;
  return s;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= dims[i];
  return n;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

bool Shape::operator==(const Shape& o) const {
  if (rank != o.rank) return false;
  for (int i = 0; i < rank; ++i)
    if (dims[i] != o.dims[i]) return false;
  return true;
}

Tensor Arena::alloc(const Shape& shape, DType dtype) {
  for (int i = 0; i < shape.rank; ++i)
    FF_CHECK(shape.dims[i] >= 0, "negative dimension in shape %s", shape.str().c_str());
  size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  bytes = (bytes + 63) & ~size_t(63);
  // Walk forward to the first block (existing or new) with room; blocks are reused in order.
  while (current_ < blocks_.size() && offset_ + bytes > blocks_[current_].size) {
    ++current_;
    offset_ = 0;
  }
  if (current_ == blocks_.size()) {
    Block b;
    b.size = std::max(bytes, block_bytes_);
    b.base.reset(new std::byte[b.size + 64]);
    auto addr = reinterpret_cast<uintptr_t>(b.base.get());
    b.data = b.base.get() + ((64 - addr % 64) % 64);
    blocks_.push_back(std::move(b));
    offset_ = 0;
  }
  Tensor t;
  t.ptr = blocks_[current_].data + offset_;
  t.shape = shape;
  t.dtype = dtype;
  offset_ += bytes;
  used_ += bytes;
  return t;
}

void Arena::reset() {
  current_ = 0;
  offset_ = 0;
  used_ = 0;
}

size_t Arena::bytes_reserved() const {
  size_t n = 0;
  for (const auto& b : blocks_) n += b.size;
  return n;
}

size_t Arena::bytes_used() const { return used_; }

}  // namespace ff
