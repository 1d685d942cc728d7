// `fivefold config-reference`: the run config's fields (model, optim, train, parallel) as Markdown
// tables, from the same field lists the flags and the JSON config come from; docs/config.md is
// its output, and a test fails when the committed copy is stale.
#pragma once
#include <string>

#include "train/config.h"

namespace ff {

std::string config_reference(const RunConfig& defaults);

}  // namespace ff
