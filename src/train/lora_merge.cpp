#include "train/lora_merge.h"

#include <vector>

namespace ff {

void merge_lora(ModelConfig& c, TensorMap& tensors) {
  FF_CHECK(c.lora_rank > 0, "merge_lora: the model has no LoRA adapters (model.lora_rank = 0)");
  const double scale = c.lora_alpha / static_cast<double>(c.lora_rank);
  const std::string suffix = ".lora_A.weight";
  std::vector<std::string> adapters;
  for (const auto& [name, t] : tensors)
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      adapters.push_back(name);
  for (const std::string& a_name : adapters) {
    const std::string base = a_name.substr(0, a_name.size() - suffix.size());
    auto b_it = tensors.find(base + ".lora_B.weight");
    auto w_it = tensors.find(base + ".weight");
    FF_CHECK(b_it != tensors.end() && w_it != tensors.end(), "merge_lora: '%s' has no matching lora_B or base weight",
             a_name.c_str());
    const HostTensor& A = tensors.at(a_name);  // [r, in]
    const HostTensor& B = b_it->second;        // [out, r]
    HostTensor& W = w_it->second;              // [out, in]
    const int64_t r = A.shape[0], in = A.shape[1], out = B.shape[0];
    FF_CHECK(B.shape[1] == r && W.shape[0] == out && W.shape[1] == in, "merge_lora: '%s': shapes of A, B and the weight "
             "do not fit", base.c_str());
    // W[o, i] += scale sum_k B[o, k] A[k, i], accumulated in double.
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) {
        double s = 0;
        for (int64_t k = 0; k < r; ++k)
          s += double(B.data[static_cast<size_t>(o * r + k)]) * double(A.data[static_cast<size_t>(k * in + i)]);
        W.data[static_cast<size_t>(o * in + i)] += static_cast<float>(scale * s);
      }
    tensors.erase(b_it);
    tensors.erase(a_name);
  }
  c.lora_rank = 0;
}

TensorMap lora_tensors(const TensorMap& tensors) {
  TensorMap out;
  for (const auto& [name, t] : tensors)
    if (is_adapter_name(name)) out[name] = t;
  return out;
}

}  // namespace ff
