// Checkpoints: the format round-trips bit-exactly, shards assemble under another layout, pruning
// keeps the newest N, and bad checkpoints give errors naming the tensor and the file.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/checkpoint.h"

#include "test_util.h"

namespace ff {
namespace {

namespace fs = std::filesystem;

std::string fresh_dir(const std::string& name) { return test::fresh_dir("ckpt_" + name); }

// A small store: two matrices, a norm vector; values drawn from `seed`.
struct Toy {
  ParamStore store;
  std::vector<float> m, v, bias;
  explicit Toy(uint64_t seed, int64_t rows = 4) {
    store.add("model.layers.0.mlp.gate.weight", Shape{rows, 6}, ParamInit::normal, 1.0f);
    store.add("model.layers.0.self_attn.q_proj.weight", Shape{6, 6}, ParamInit::normal, 1.0f);
    store.add("model.norm.weight", Shape{6}, ParamInit::normal, 1.0f);
    store.allocate(seed);
    Rng r(seed, "moments");
    m.resize(static_cast<size_t>(store.numel()));
    v.resize(m.size());
    for (auto& x : m) x = r.normal();
    for (auto& x : v) x = r.uniform();
    bias = {r.normal(), r.normal(), r.normal(), r.normal()};
  }
  CheckpointContents contents() {
    return {&store, &m, &v, {{"model.layers.0.mlp.gate.expert_bias", &bias}}};
  }
};

TrainingState state_at(int64_t step) {
  TrainingState s;
  s.step = step;
  s.consumed_samples = 16 * step;
  s.optimizer_steps = step;
  s.data_cursor = R"({"kind":"rng","state":[1,2,3,18446744073709551615]})";
  s.rng["dropout"] = {5, 6, 7, 8};
  s.config_json = R"({"model":{"d_model":6}})";
  s.layout_json = R"({"world_size":1})";
  return s;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Checkpoint, SaveAndLoadIsBitExactWithAllState) {
  const std::string dir = fresh_dir("roundtrip");
  Communicator world = Communicator::world();
  Toy a(1), b(2);
  const std::string folder = save_checkpoint(dir, a.contents(), state_at(7), world, 0);
  EXPECT_EQ(folder, dir + "/step_00000007");
  EXPECT_EQ(resolve_checkpoint(dir), folder);
  EXPECT_EQ(resolve_checkpoint(folder), folder);
  load_checkpoint_tensors(folder, b.contents());
  EXPECT_EQ(0, std::memcmp(a.store.values(), b.store.values(), sizeof(float) * a.store.numel()));
  EXPECT_EQ(a.m, b.m);
  EXPECT_EQ(a.v, b.v);
  EXPECT_EQ(a.bias, b.bias);
  TrainingState s = read_checkpoint_state(folder, 0);
  EXPECT_EQ(s.step, 7);
  EXPECT_EQ(s.consumed_samples, 112);
  EXPECT_EQ(s.optimizer_steps, 7);
  EXPECT_EQ(s.data_cursor, state_at(7).data_cursor);
  EXPECT_EQ(s.rng.at("dropout")[3], 8u);
  EXPECT_EQ(nlohmann::json::parse(s.config_json)["model"]["d_model"], 6);
  // Whole tensors for conversion.
  auto model = read_checkpoint_model(folder);
  EXPECT_EQ(model.size(), 4u);
  EXPECT_EQ(model.at("model.norm.weight").data[5], a.store.find("model.norm.weight")->value[5]);
}

TEST(Checkpoint, ShardsWrittenByTwoRanksAssembleUnderAnotherLayout) {
  // Two "ranks" each hold half the rows of an [8, 6] tensor; a reader holding columns 2..5 of
  // the whole tensor takes its slice from both chunks.
  const std::string dir = fresh_dir("shards");
  Communicator world = Communicator::world();
  std::vector<float> full(48);
  for (size_t i = 0; i < full.size(); ++i) full[i] = static_cast<float>(i);
  for (int r = 0; r < 2; ++r) {
    ParamStore s;
    Param* p = s.add("w", Shape{4, 6}, ParamInit::zeros);
    p->global_shape = Shape{8, 6};
    p->local_offset = Shape{4 * r, 0};
    s.allocate(0);
    std::copy(full.begin() + 24 * r, full.begin() + 24 * (r + 1), p->value);
    CheckpointContents c{&s, nullptr, nullptr, {}};
    save_checkpoint(dir + "/r" + std::to_string(r), c, state_at(1), world, 0);
  }
  // Merge into one two-rank checkpoint as a two-rank save would have written it.
  const std::string folder = dir + "/r0/step_00000001";
  fs::copy_file(dir + "/r1/step_00000001/model.r00000.safetensors", folder + "/model.r00001.safetensors");
  auto meta = nlohmann::json::parse(std::ifstream(folder + "/meta.json"));
  meta["files"].push_back({{"file", "model.r00001.safetensors"}, {"rank", 1}, {"kind", "model"},
                           {"bytes", fs::file_size(folder + "/model.r00001.safetensors")}});
  meta["world_size"] = 2;
  std::ofstream(folder + "/meta.json") << meta.dump();

  auto whole = read_checkpoint_model(folder);
  EXPECT_EQ(whole.at("w").shape, (std::vector<int64_t>{8, 6}));
  EXPECT_EQ(whole.at("w").data, full);
  ParamStore cols;
  Param* p = cols.add("w", Shape{8, 4}, ParamInit::zeros);
  p->global_shape = Shape{8, 6};
  p->local_offset = Shape{0, 2};
  cols.allocate(0);
  load_checkpoint_tensors(folder, {&cols, nullptr, nullptr, {}});
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) EXPECT_EQ(p->value[i * 4 + j], full[i * 6 + j + 2]);
  // With the second rank's file gone from the list, the reader says what is missing.
  meta["files"].erase(meta["files"].size() - 1);
  std::ofstream(folder + "/meta.json") << meta.dump();
  EXPECT_NE(error_of([&] { read_checkpoint_model(folder); }).find("covers 24 of the 48 elements"), std::string::npos);
}

TEST(Checkpoint, KeepsTheNewestNAndCleansKilledSaves) {
  const std::string dir = fresh_dir("keep");
  Communicator world = Communicator::world();
  Toy a(1);
  fs::create_directories(dir + "/step_00000099.tmp");  // left by a killed save
  // Left by a kill while an older fivefold deleted a pruned checkpoint: its meta.json went first.
  fs::create_directories(dir + "/step_00000050");
  std::ofstream(dir + "/step_00000050/model.r00000.safetensors") << "half of a deleted checkpoint";
  for (int64_t step = 1; step <= 5; ++step) save_checkpoint(dir, a.contents(), state_at(step), world, 2);
  EXPECT_FALSE(fs::exists(dir + "/step_00000050"));
  for (int64_t step = 1; step <= 3; ++step)  // pruned ones leave nothing behind, not even as .tmp
    EXPECT_FALSE(fs::exists(dir + "/step_0000000" + std::to_string(step) + ".tmp"));
  auto all = list_checkpoints(dir);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(fs::path(all[0]).filename(), "step_00000004");
  EXPECT_EQ(fs::path(all[1]).filename(), "step_00000005");
  EXPECT_FALSE(fs::exists(dir + "/step_00000099.tmp"));
  EXPECT_EQ(resolve_checkpoint(dir), dir + "/step_00000005");
  // keep 1 never deletes the only good one; saving the same step again keeps it.
  save_checkpoint(dir, a.contents(), state_at(5), world, 1);
  EXPECT_EQ(list_checkpoints(dir).size(), 1u);
  EXPECT_EQ(resolve_checkpoint(dir), dir + "/step_00000005");
  // `latest` naming a missing folder is an error that says so.
  std::ofstream(dir + "/latest") << "step_00000042\n";
  EXPECT_NE(error_of([&] { resolve_checkpoint(dir); }).find("step_00000042"), std::string::npos);
  EXPECT_NE(error_of([&] { resolve_checkpoint(dir + "/nothing"); }).find("does not exist"), std::string::npos);
}

TEST(Checkpoint, BadCheckpointsNameTheTensorAndTheFile) {
  const std::string dir = fresh_dir("bad");
  Communicator world = Communicator::world();
  Toy a(1);
  const std::string folder = save_checkpoint(dir, a.contents(), state_at(3), world, 0);
  const std::string model_file = folder + "/model.r00000.safetensors";
  auto expect = [&](const std::function<void()>& f, std::vector<std::string> needles) {
    const std::string msg = error_of(f);
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  };
  // A model with other shapes.
  Toy other(1, 5);
  expect([&] { load_checkpoint_tensors(folder, other.contents()); },
         {"model.layers.0.mlp.gate.weight", model_file, "global shape [4, 6]", "[5, 6]"});
  // A tensor the checkpoint lacks.
  ParamStore extra;
  extra.add("model.layers.9.mlp.up_proj.weight", Shape{2, 2}, ParamInit::zeros);
  extra.allocate(0);
  expect([&] { load_checkpoint_tensors(folder, {&extra, nullptr, nullptr, {}}); },
         {"model.layers.9.mlp.up_proj.weight", "missing", folder});
  SafetensorsFile good(model_file);
  const std::string placement = good.metadata().at("fivefold_placement");
  // Wrong dtype: the same tensors rewritten as BF16 (meta.json updated to the new size).
  {
    std::vector<std::vector<uint16_t>> halves;
    std::vector<SafetensorsEntry> entries;
    for (const auto& n : good.names()) {
      HostTensor t = good.read_any(n);
      std::vector<uint16_t> h(t.data.size());
      for (size_t i = 0; i < h.size(); ++i) h[i] = f32_to_bf16(t.data[i]);
      halves.push_back(std::move(h));
      entries.push_back({n, t.shape, halves.back().data(), StDtype::BF16});
    }
    const std::string bad = folder + "/bf16.safetensors";
    write_safetensors(bad, entries, {{"fivefold_placement", placement}});
    fs::copy_file(model_file, folder + "/good.bak");
    fs::rename(bad, model_file);
    auto meta = nlohmann::json::parse(std::ifstream(folder + "/meta.json"));
    const auto old_bytes = meta["files"][0]["bytes"];
    meta["files"][0]["bytes"] = fs::file_size(model_file);
    const auto checksum = meta["files"][0]["checksum"];
    meta["files"][0].erase("checksum");  // as a checkpoint from before checksums: the reader's own checks
    std::ofstream(folder + "/meta.json") << meta.dump();
    expect([&] { load_checkpoint_tensors(folder, a.contents()); }, {model_file, "dtype BF16", "F32"});
    meta["files"][0]["checksum"] = checksum;
    fs::rename(folder + "/good.bak", model_file);
    meta["files"][0]["bytes"] = old_bytes;
    std::ofstream(folder + "/meta.json") << meta.dump();
  }
  load_checkpoint_tensors(folder, a.contents());  // restored: loads again
  // One flipped bit in a tensor's values: the checksum names the file (the sizes still agree).
  {
    fs::copy_file(model_file, folder + "/good.bak");
    std::fstream f(model_file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-3, std::ios::end);
    char c = 0;
    f.get(c);
    f.seekp(-3, std::ios::end);
    f.put(static_cast<char>(c ^ 0x10));
  }
  expect([&] { load_checkpoint_tensors(folder, a.contents()); }, {model_file, "is damaged", "checksum"});
  expect([&] { read_checkpoint_model(folder); }, {model_file, "is damaged"});
  fs::remove(model_file);
  fs::rename(folder + "/good.bak", model_file);
  load_checkpoint_tensors(folder, a.contents());
  {  // and in a state file
    const std::string state_file = folder + "/state.r00000.json";
    std::string text;
    {
      std::ifstream in(state_file);
      text.assign(std::istreambuf_iterator<char>(in), {});
    }
    std::ofstream(state_file) << std::string(text).replace(text.find("\"rank\": 0"), 9, "\"rank\": 1");
    expect([&] { read_checkpoint_state(folder, 0); }, {state_file, "is damaged"});
    std::ofstream(state_file) << text;
  }
  // A truncated file: meta.json's size check names it.
  fs::copy_file(model_file, folder + "/good.bak");
  fs::resize_file(model_file, fs::file_size(model_file) - 10);
  expect([&] { load_checkpoint_tensors(folder, a.contents()); }, {model_file, "truncated"});
  // Truncated and meta.json agreeing (both damaged): the safetensors reader names file and tensor.
  auto meta = nlohmann::json::parse(std::ifstream(folder + "/meta.json"));
  meta["files"][0]["bytes"] = fs::file_size(model_file);
  meta["files"][0].erase("checksum");  // the reader's own checks, as for a checkpoint without checksums
  std::ofstream(folder + "/meta.json") << meta.dump();
  expect([&] { load_checkpoint_tensors(folder, a.contents()); }, {model_file});
  // A header that lies about offsets.
  fs::remove(model_file);
  fs::copy_file(folder + "/good.bak", model_file);
  {
    std::fstream f(model_file, std::ios::in | std::ios::out | std::ios::binary);
    uint64_t hlen = 0;
    f.read(reinterpret_cast<char*>(&hlen), 8);
    std::string head(hlen + 8, '\0');
    f.seekg(0);
    f.read(head.data(), static_cast<std::streamsize>(head.size()));
    const auto pos = head.find("\"data_offsets\":[0,");
    ASSERT_NE(pos, std::string::npos);
    f.seekp(static_cast<std::streamoff>(pos + 16));
    f.write("1", 1);  // [0, ...] -> [1, ...]: overlaps nothing, leaves a hole, wrong size
  }
  meta["files"][0]["bytes"] = fs::file_size(model_file);
  std::ofstream(folder + "/meta.json") << meta.dump();
  expect([&] { load_checkpoint_tensors(folder, a.contents()); }, {model_file, "tensor '"});
  // A damaged meta.json.
  std::ofstream(folder + "/meta.json") << "{\"format\": \"fivefold-checkpoint\", ";
  expect([&] { load_checkpoint_tensors(folder, a.contents()); }, {folder + "/meta.json", "not valid JSON"});
}

}  // namespace
}  // namespace ff
