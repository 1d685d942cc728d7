#include "models/layer_kind.h"

#include "core/check.h"

namespace ff {

// Each kind's descriptor, defined in its home in models/kinds/.
extern const LayerKindInfo kAttentionKind, kMlpKind, kMoeKind, kMambaKind;

namespace {
const LayerKindInfo* const kKinds[] = {&kAttentionKind, &kMlpKind, &kMoeKind, &kMambaKind};
}  // namespace

const LayerKindInfo* layer_kind_of(char symbol) {
  for (const LayerKindInfo* k : kKinds)
    if (k->symbol == symbol) return k;
  return nullptr;
}

const LayerKindInfo& layer_kind(LayerKind kind) {
  for (const LayerKindInfo* k : kKinds)
    if (k->kind == kind) return *k;
  FF_FAIL("layer kind %d has no descriptor in models/layer_kind.cpp", static_cast<int>(kind));
}

}  // namespace ff
