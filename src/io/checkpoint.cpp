#include "io/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.h"
#include "core/hash.h"
#include "io/progress.h"

namespace ff {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormat = "fivefold-checkpoint";
constexpr int kVersion = 1;

std::string step_name(int64_t step) { return strprintf("step_%08lld", (long long)step); }
std::string rank_file(const char* kind, int rank, const char* ext) {
  return strprintf("%s.r%05d.%s", kind, rank, ext);
}
// A role's file of one kind ("model", "optim"): the plain name for role "model", else prefixed.
std::string role_file(const std::string& role, const char* kind, int rank) {
  const std::string k = role == "model" ? std::string(kind) : role + "." + kind;
  return rank_file(k.c_str(), rank, "safetensors");
}
std::string file_role(const json& entry) { return entry.value("role", std::string("model")); }

void check_roles(const std::vector<CheckpointContents>& models) {
  FF_CHECK(!models.empty(), "save_checkpoint: no model given");
  for (size_t i = 0; i < models.size(); ++i) {
    const std::string& r = models[i].role;
    FF_CHECK(!r.empty() && r != "optim" && r != "state" &&
                 std::all_of(r.begin(), r.end(), [](char c) { return std::islower(c) || std::isdigit(c) || c == '_'; }),
             "save_checkpoint: role '%s' is not a name of [a-z0-9_] (nor 'optim' or 'state')", r.c_str());
    for (size_t j = 0; j < i; ++j) FF_CHECK(models[j].role != r, "save_checkpoint: role '%s' given twice", r.c_str());
  }
}

// Parses "step_<digits>" (and, with tmp, "step_<digits>.tmp"); -1 otherwise.
int64_t parse_step_name(const std::string& n, bool tmp) {
  const std::string suffix = tmp ? ".tmp" : "";
  if (n.size() <= 5 + suffix.size() || n.compare(0, 5, "step_") != 0) return -1;
  if (!suffix.empty() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) != 0) return -1;
  const std::string digits = n.substr(5, n.size() - 5 - suffix.size());
  if (digits.empty() || digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return -1;
  return std::stoll(digits);
}

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  FF_CHECK(fd >= 0, "cannot open '%s' to fsync it: %s", path.c_str(), std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  FF_CHECK(rc == 0, "fsync of '%s' failed: %s", path.c_str(), std::strerror(err));
}

// tmp + fsync + rename; the caller fsyncs the folder when the rename must be durable.
void write_text_durably(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    FF_CHECK(f.good(), "cannot write '%s'", tmp.c_str());
    f << text;
    f.flush();
    FF_CHECK(f.good(), "writing '%s' failed (disk full?)", tmp.c_str());
  }
  fsync_path(tmp, false);
  FF_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '%s' to '%s': %s", tmp.c_str(), path.c_str(),
           std::strerror(errno));
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  FF_CHECK(f.good(), "cannot open '%s'", path.c_str());
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A checkpoint file's checksum: core/hash.h word_hash over its bytes; written as 16 hex digits.
uint64_t file_checksum(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  FF_CHECK(f.good(), "cannot open '%s'", path.c_str());
  std::vector<char> buf(size_t(8) << 20);  // a multiple of 8: the words line up across reads
  uint64_t h = kFnv1aBasis;
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h = word_hash(buf.data(), static_cast<size_t>(f.gcount()), h);
  }
  return h;
}
std::string checksum_hex(uint64_t h) { return strprintf("%016llx", (unsigned long long)h); }

// Files of a checkpoint listed with a checksum must still have it (checkpoints written before
// checksums list none and are read as they are).
void verify_checksum(const std::string& folder, const json& entry) {
  if (!entry.contains("checksum")) return;
  const std::string path = folder + "/" + entry["file"].get<std::string>();
  const std::string got = checksum_hex(file_checksum(path)), want = entry["checksum"].is_string() ? entry["checksum"].get<std::string>() : "";
  FF_CHECK(got == want, "checkpoint file '%s' is damaged: its checksum is %s, meta.json recorded %s when it was saved "
           "(a flipped bit or an overwrite); resume from an older checkpoint", path.c_str(), got.c_str(), want.c_str());
}

json parse_json_file(const std::string& path) {
  const std::string text = read_text(path);
  try {
    return json::parse(text);
  } catch (const std::exception& e) {
    FF_FAIL("'%s' is not valid JSON (%s); the checkpoint is damaged: resume from an older one", path.c_str(), e.what());
  }
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

json read_meta(const std::string& folder) {
  const std::string path = folder + "/meta.json";
  FF_CHECK(fs::exists(path), "'%s' is not a fivefold checkpoint: it has no meta.json", folder.c_str());
  json meta = parse_json_file(path);
  FF_CHECK(meta.is_object() && meta.value("format", "") == kFormat, "'%s': format is not '%s'", path.c_str(), kFormat);
  FF_CHECK(meta.value("version", 0) == kVersion, "'%s': version %s; this fivefold reads version %d", path.c_str(),
           meta.value("version", json()).dump().c_str(), kVersion);
  for (const char* k : {"step", "consumed_samples", "optimizer_steps", "world_size"})
    FF_CHECK(meta.contains(k) && meta[k].is_number_integer(), "'%s': field '%s' is missing or not an integer",
             path.c_str(), k);
  FF_CHECK(meta.contains("files") && meta["files"].is_array(), "'%s': field 'files' is missing", path.c_str());
  // Every listed file exists with the size it was written with (catches truncation early).
  for (const auto& f : meta["files"]) {
    FF_CHECK(f.is_object() && f.contains("file") && f["file"].is_string() && f.contains("bytes") &&
             f["bytes"].is_number_unsigned() && f.contains("rank") && f.contains("kind"),
             "'%s': a 'files' entry lacks file, rank, kind or bytes", path.c_str());
    const std::string p = folder + "/" + f["file"].get<std::string>();
    FF_CHECK(fs::exists(p), "checkpoint file '%s' listed in meta.json is missing", p.c_str());
    const auto size = fs::file_size(p);
    FF_CHECK(size == f["bytes"].get<uint64_t>(), "checkpoint file '%s' has %llu bytes, meta.json says %llu "
             "(truncated or overwritten); resume from an older checkpoint", p.c_str(), (unsigned long long)size,
             (unsigned long long)f["bytes"].get<uint64_t>());
  }
  return meta;
}

// One stored piece of a tensor: where it sits in the global tensor and which file holds it.
struct Chunk {
  const SafetensorsFile* file;
  std::vector<int64_t> global_shape, offset, shape;
};

// The chunks of every tensor in the files of one kind ("model" or "optim").
struct ChunkIndex {
  std::vector<SafetensorsFile> files;
  std::map<std::string, std::vector<Chunk>> chunks;
  std::string folder;

  ChunkIndex(const std::string& dir, const json& meta, const std::string& kind, const std::string& role = "model")
      : folder(dir) {
    for (const auto& f : meta["files"])
      if (f["kind"] == kind && file_role(f) == role) {
        verify_checksum(dir, f);
        files.emplace_back(dir + "/" + f["file"].get<std::string>());
      }
    for (const auto& file : files) {
      const char* p = file.path().c_str();
      auto it = file.metadata().find("fivefold_placement");
      FF_CHECK(it != file.metadata().end(), "'%s' has no fivefold_placement metadata; not a fivefold checkpoint file", p);
      json placement;
      try {
        placement = json::parse(it->second);
      } catch (const std::exception& e) {
        FF_FAIL("'%s': fivefold_placement is not valid JSON: %s", p, e.what());
      }
      FF_CHECK(placement.is_object(), "'%s': fivefold_placement must be an object", p);
      for (const std::string& name : file.names())
        FF_CHECK(placement.contains(name), "'%s': tensor '%s' has no placement entry", p, name.c_str());
      for (auto e = placement.begin(); e != placement.end(); ++e) {
        const std::string& name = e.key();
        FF_CHECK(file.contains(name), "'%s': placement names tensor '%s', which the file does not hold", p, name.c_str());
        Chunk c{&file, {}, {}, file.info(name).shape};
        try {
          c.global_shape = e->at("global_shape").get<std::vector<int64_t>>();
          c.offset = e->at("offset").get<std::vector<int64_t>>();
        } catch (const std::exception& ex) {
          FF_FAIL("'%s': placement of tensor '%s' lacks global_shape or offset: %s", p, name.c_str(), ex.what());
        }
        FF_CHECK(c.global_shape.size() == c.shape.size() && c.offset.size() == c.shape.size(),
                 "'%s': tensor '%s' placement has the wrong number of dims", p, name.c_str());
        for (size_t d = 0; d < c.shape.size(); ++d)
          FF_CHECK(c.offset[d] >= 0 && c.offset[d] + c.shape[d] <= c.global_shape[d],
                   "'%s': tensor '%s' slice %s at offset %s lies outside its global shape %s", p, name.c_str(),
                   shape_str(c.shape).c_str(), shape_str(c.offset).c_str(), shape_str(c.global_shape).c_str());
        chunks[name].push_back(std::move(c));
      }
    }
  }

  std::string file_list() const {
    std::string s;
    for (const auto& f : files) s += (s.empty() ? "" : ", ") + fs::path(f.path()).filename().string();
    return s;
  }

  // Fills dst, the slice [offset, offset + shape) of tensor `name` whose global shape is
  // `global`, from the chunks that overlap it.
  void load(const std::string& name, const std::vector<int64_t>& global, const std::vector<int64_t>& offset,
            const std::vector<int64_t>& shape, float* dst) const {
    auto it = chunks.find(name);
    FF_CHECK(it != chunks.end(), "tensor '%s' is missing from checkpoint '%s' (files: %s); was it written by a "
             "different model config?", name.c_str(), folder.c_str(), file_list().c_str());
    int64_t want = 1;
    for (int64_t d : shape) want *= d;
    int64_t got = 0;
    for (const Chunk& c : it->second) {
      const char* p = c.file->path().c_str();
      FF_CHECK(c.global_shape == global, "'%s': tensor '%s' has global shape %s, the model expects %s (a checkpoint "
               "of a different model config?)", p, name.c_str(), shape_str(c.global_shape).c_str(),
               shape_str(global).c_str());
      FF_CHECK(c.file->info(name).dtype == StDtype::F32, "'%s': tensor '%s' has dtype %s; checkpoints hold F32",
               p, name.c_str(), st_dtype_name(c.file->info(name).dtype));
      got += copy_overlap(static_cast<const char*>(c.file->raw(name)), c, offset, shape, dst);
    }
    FF_CHECK(got == want, "checkpoint '%s' covers %lld of the %lld elements this rank needs of tensor '%s' "
             "(missing or overlapping shards)", folder.c_str(), (long long)got, (long long)want, name.c_str());
  }

  // Copies the intersection of chunk c and the slice (offset, shape); returns elements copied.
  static int64_t copy_overlap(const char* src, const Chunk& c, const std::vector<int64_t>& offset,
                              const std::vector<int64_t>& shape, float* dst) {
    const size_t R = shape.size();
    if (R == 0) {
      std::memcpy(dst, src, 4);
      return 1;
    }
    std::vector<int64_t> lo(R), hi(R);
    for (size_t d = 0; d < R; ++d) {
      lo[d] = std::max(offset[d], c.offset[d]);
      hi[d] = std::min(offset[d] + shape[d], c.offset[d] + c.shape[d]);
      if (lo[d] >= hi[d]) return 0;
    }
    const int64_t run = hi[R - 1] - lo[R - 1];
    std::vector<int64_t> idx(lo);  // global index of the current run's start
    int64_t copied = 0;
    while (true) {
      int64_t s = 0, t = 0;  // flat positions in the chunk and in dst
      for (size_t d = 0; d < R; ++d) {
        s = s * c.shape[d] + (idx[d] - c.offset[d]);
        t = t * shape[d] + (idx[d] - offset[d]);
      }
      std::memcpy(dst + t, src + 4 * s, 4 * static_cast<size_t>(run));
      copied += run;
      size_t d = R - 1;
      while (d-- > 0) {
        if (++idx[d] < hi[d]) break;
        idx[d] = lo[d];
      }
      if (d == static_cast<size_t>(-1)) break;
    }
    return copied;
  }
};

void write_rank_tensors(const std::string& path, const std::vector<SafetensorsEntry>& entries, const json& placement,
                        int rank, Progress* progress) {
  write_safetensors(path, entries,
                    {{"format", kFormat}, {"rank", std::to_string(rank)}, {"fivefold_placement", placement.dump()}},
                    progress);
}

}  // namespace

std::vector<std::string> list_checkpoints(const std::string& save_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(save_dir, ec)) {
    const std::string n = e.path().filename().string();
    const int64_t step = parse_step_name(n, false);
    if (step >= 0 && e.is_directory() && fs::exists(e.path() / "meta.json")) found.emplace_back(step, e.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& [s, p] : found) out.push_back(p);
  return out;
}

namespace {
struct WrittenFile {
  int64_t bytes = -1;
  uint64_t checksum = 0;
};
// The tensors of this rank's model and optimizer files of one role.
struct RoleTensors {
  std::vector<SafetensorsEntry> model, optim;
  json model_place = json::object(), optim_place = json::object();
};
RoleTensors role_tensors(const CheckpointContents& contents) {
  RoleTensors r;
  auto& [model, optim, model_place, optim_place] = r;
  for (const Param& p : contents.params->params()) {
    if (p.replica || p.data_replica) continue;  // another rank writes the same values
    const json place = {{"global_shape", p.global_shape.vec()}, {"offset", p.local_offset.vec()}};
    model.push_back({p.name, p.local_shape.vec(), p.value});
    model_place[p.name] = place;
    if (contents.exp_avg && p.trainable) {  // a frozen parameter has no optimizer state
      optim.push_back({p.name + ".exp_avg", p.local_shape.vec(), contents.exp_avg->data() + p.offset});
      optim.push_back({p.name + ".exp_avg_sq", p.local_shape.vec(), contents.exp_avg_sq->data() + p.offset});
      optim_place[p.name + ".exp_avg"] = place;
      optim_place[p.name + ".exp_avg_sq"] = place;
    }
  }
  for (const StateBuffer& b : contents.buffers)
    if (b.write) {
      const std::vector<int64_t> shape{static_cast<int64_t>(b.data->size())};
      model.push_back({b.name, shape, b.data->data()});
      model_place[b.name] = {{"global_shape", shape}, {"offset", {0}}};
    }
  return r;
}

// This rank's model file (and optimizer file, when the contents carry moments) of one role.
// Returns their sizes in bytes (-1: no optimizer file) and checksums.
std::array<WrittenFile, 2> write_role_files(const std::string& tmp_dir, const CheckpointContents& contents, int rank,
                                            Progress* progress) {
  const auto [model, optim, model_place, optim_place] = role_tensors(contents);
  const std::string model_file = tmp_dir + "/" + role_file(contents.role, "model", rank);
  const std::string optim_file = tmp_dir + "/" + role_file(contents.role, "optim", rank);
  write_rank_tensors(model_file, model, model_place, rank, progress);
  if (contents.exp_avg) write_rank_tensors(optim_file, optim, optim_place, rank, progress);
  std::array<WrittenFile, 2> out;
  out[0] = {static_cast<int64_t>(fs::file_size(model_file)), file_checksum(model_file)};
  if (contents.exp_avg) out[1] = {static_cast<int64_t>(fs::file_size(optim_file)), file_checksum(optim_file)};
  return out;
}
}  // namespace

std::string save_checkpoint(const std::string& save_dir, const std::vector<CheckpointContents>& models,
                            const TrainingState& state, const Communicator& world, int64_t keep_last,
                            bool progress) {
  check_roles(models);
  const int rank = world.rank();
  const bool lead = rank == 0;
  const std::string name = step_name(state.step);
  const std::string final_dir = save_dir + "/" + name, tmp_dir = final_dir + ".tmp";
  int64_t exists = 0;
  if (lead) {
    fs::create_directories(save_dir);
    exists = fs::exists(final_dir + "/meta.json") ? 1 : 0;
    if (!exists) {
      fs::remove_all(tmp_dir);
      fs::remove_all(final_dir);  // an incomplete folder of the same name (no meta.json)
      fs::create_directories(tmp_dir);
    }
  }
  world.broadcast(&exists, sizeof(exists), 0);
  if (!exists) {
    // This rank's files: per role its model and optimizer file, then the state file; for each its
    // size and checksum (as the bits of an int64, for one all_gather).
    const size_t R = models.size(), per_rank = 2 * (2 * R + 1);
    std::vector<int64_t> mine(per_rank);
    auto record = [&](size_t slot, const WrittenFile& w) {
      mine[2 * slot] = w.bytes;
      mine[2 * slot + 1] = static_cast<int64_t>(w.checksum);
    };
    // The lead shows its own files' progress (every rank writes about as much at once).
    int64_t my_bytes = 0;
    if (lead && progress)
      for (const auto& m : models) {
        if (!m.params) continue;
        const RoleTensors t = role_tensors(m);
        my_bytes += safetensors_data_bytes(t.model) + (m.exp_avg ? safetensors_data_bytes(t.optim) : 0);
      }
    Progress shown("checkpoint " + name, my_bytes, ProgressUnit::bytes, "", printing(lead && progress));
    for (size_t i = 0; i < R; ++i) {
      if (!models[i].params) {  // a model of other ranks of the job
        record(2 * i, {});
        record(2 * i + 1, {});
        continue;
      }
      const auto files = write_role_files(tmp_dir, models[i], rank, &shown);
      record(2 * i, files[0]);
      record(2 * i + 1, files[1]);
    }
    const std::string state_file = rank_file("state", rank, "json");
    json st = {{"rank", rank}, {"data_cursor", state.data_cursor}, {"rng", state.rng}};
    write_text_durably(tmp_dir + "/" + state_file, st.dump(1));
    record(2 * R, {static_cast<int64_t>(fs::file_size(tmp_dir + "/" + state_file)), file_checksum(tmp_dir + "/" + state_file)});
    std::vector<int64_t> all(per_rank * static_cast<size_t>(world.size()));
    world.all_gather(all.data(), mine.data(), static_cast<int64_t>(per_rank));
    std::vector<int64_t> steps(R);  // each role's optimizer steps, from the ranks that hold it
    for (size_t i = 0; i < R; ++i) steps[i] = models[i].params ? models[i].optimizer_steps : -1;
    std::vector<int64_t> all_steps(R * static_cast<size_t>(world.size()));
    world.all_gather(all_steps.data(), steps.data(), static_cast<int64_t>(R));
    if (lead) {
      json files = json::array(), roles = json::array();
      auto entry = [](const std::string& file, int r, const char* kind, const int64_t* slot) {
        return json{{"file", file}, {"rank", r}, {"kind", kind}, {"bytes", slot[0]},
                    {"checksum", checksum_hex(static_cast<uint64_t>(slot[1]))}};
      };
      for (int r = 0; r < world.size(); ++r) {
        const int64_t* s = all.data() + per_rank * static_cast<size_t>(r);
        for (size_t i = 0; i < R; ++i) {
          const std::string& role = models[i].role;
          if (s[4 * i] < 0) continue;  // rank r holds no part of this model
          json m = entry(role_file(role, "model", r), r, "model", s + 4 * i);
          m["role"] = role;
          files.push_back(m);
          if (s[4 * i + 2] >= 0) {
            json o = entry(role_file(role, "optim", r), r, "optim", s + 4 * i + 2);
            o["role"] = role;
            files.push_back(o);
          }
        }
        files.push_back(entry(rank_file("state", r, "json"), r, "state", s + 4 * R));
      }
      for (size_t i = 0; i < R; ++i) {
        int64_t held = -1;
        for (int r = 0; r < world.size(); ++r) held = std::max(held, all_steps[static_cast<size_t>(r) * R + i]);
        FF_CHECK(held >= 0, "save_checkpoint: no rank of the job holds model '%s'", models[i].role.c_str());
        roles.push_back({{"role", models[i].role}, {"optimizer_steps", held}});
      }
      json meta = {{"format", kFormat}, {"version", kVersion}, {"step", state.step},
                   {"consumed_samples", state.consumed_samples}, {"optimizer_steps", state.optimizer_steps},
                   {"world_size", world.size()}, {"files", files}, {"models", roles}};
      meta["config"] = state.config_json.empty() ? json::object() : json::parse(state.config_json);
      meta["layout"] = state.layout_json.empty() ? json::object() : json::parse(state.layout_json);
      write_text_durably(tmp_dir + "/meta.json", meta.dump(1));
      fsync_path(tmp_dir, true);
      FF_CHECK(std::rename(tmp_dir.c_str(), final_dir.c_str()) == 0, "cannot rename '%s' to '%s': %s",
               tmp_dir.c_str(), final_dir.c_str(), std::strerror(errno));
      fsync_path(save_dir, true);
    }
  }
  if (lead) {
    write_text_durably(save_dir + "/latest", name + "\n");
    fsync_path(save_dir, true);
    // Prune: the oldest beyond keep_last, each renamed to step_N.tmp before it is deleted (a rename
    // is atomic: a kill mid-delete leaves a .tmp folder, never a step folder without meta.json);
    // then every leftover: .tmp folders of killed saves and deletes, and step folders without
    // meta.json (which only a kill during an older fivefold's delete could leave).
    std::error_code ec;
    if (keep_last > 0) {
      auto all = list_checkpoints(save_dir);
      for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i)
        if (fs::path(all[i]).filename() != name) {
          const std::string doomed = all[i] + ".tmp";
          fs::remove_all(doomed, ec);
          fs::rename(all[i], doomed, ec);
        }
    }
    for (const auto& e : fs::directory_iterator(save_dir, ec)) {
      const std::string n = e.path().filename().string();
      const bool stale_tmp = parse_step_name(n, true) >= 0;
      const bool headless = parse_step_name(n, false) >= 0 && e.is_directory() && !fs::exists(e.path() / "meta.json");
      if (stale_tmp || headless) fs::remove_all(e.path(), ec);
    }
  }
  world.barrier();
  return final_dir;
}

std::string resolve_checkpoint(const std::string& path) {
  FF_CHECK(fs::exists(path), "checkpoint path '%s' does not exist", path.c_str());
  if (fs::exists(path + "/meta.json")) return path;
  if (fs::exists(path + "/latest")) {
    std::string n = read_text(path + "/latest");
    while (!n.empty() && (n.back() == '\n' || n.back() == ' ')) n.pop_back();
    FF_CHECK(parse_step_name(n, false) >= 0 && fs::exists(path + "/" + n + "/meta.json"),
             "'%s/latest' names '%s', which is not a complete checkpoint folder there", path.c_str(), n.c_str());
    return path + "/" + n;
  }
  auto all = list_checkpoints(path);  // killed before the first `latest` was written
  FF_CHECK(!all.empty(), "'%s' holds no checkpoint: expected meta.json (a checkpoint folder) or a 'latest' pointer "
           "(a save folder)", path.c_str());
  return all.back();
}

TrainingState read_checkpoint_state(const std::string& folder, int world_rank) {
  json meta = read_meta(folder);
  TrainingState s;
  s.step = meta["step"].get<int64_t>();
  s.consumed_samples = meta["consumed_samples"].get<int64_t>();
  s.optimizer_steps = meta["optimizer_steps"].get<int64_t>();
  s.role_optimizer_steps["model"] = s.optimizer_steps;  // checkpoints of one model list no roles
  for (const auto& m : meta.value("models", json::array())) {
    FF_CHECK(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("optimizer_steps") &&
                 m["optimizer_steps"].is_number_integer(),
             "'%s/meta.json': a 'models' entry lacks role or optimizer_steps", folder.c_str());
    s.role_optimizer_steps[m["role"].get<std::string>()] = m["optimizer_steps"].get<int64_t>();
  }
  s.config_json = meta.value("config", json::object()).dump();
  s.layout_json = meta.value("layout", json::object()).dump();
  // A job with more ranks than the one that saved reads rank 0's state: the trainer's data cursor
  // is the same on every rank (the RNG streams are per rank and only restored exactly with the
  // same number of ranks).
  std::string path = folder + "/" + rank_file("state", world_rank, "json");
  if (!fs::exists(path)) path = folder + "/" + rank_file("state", 0, "json");
  FF_CHECK(fs::exists(path), "checkpoint '%s' has no state file (%s): the checkpoint is incomplete", folder.c_str(),
           path.c_str());
  for (const auto& f : meta["files"])
    if (f["kind"] == "state" && folder + "/" + f["file"].get<std::string>() == path) verify_checksum(folder, f);
  json st = parse_json_file(path);
  try {
    s.data_cursor = st.at("data_cursor").get<std::string>();
    s.rng = st.at("rng").get<std::map<std::string, std::array<uint64_t, 4>>>();
  } catch (const std::exception& e) {
    FF_FAIL("'%s': data_cursor or rng is missing or malformed: %s", path.c_str(), e.what());
  }
  return s;
}

namespace {
std::vector<std::string> roles_of(const json& meta) {
  std::vector<std::string> roles;
  for (const auto& f : meta["files"])
    if (f["kind"] == "model" && std::find(roles.begin(), roles.end(), file_role(f)) == roles.end())
      roles.push_back(file_role(f));
  return roles;
}

void check_role_present(const std::string& folder, const json& meta, const std::string& role) {
  const auto roles = roles_of(meta);
  if (std::find(roles.begin(), roles.end(), role) != roles.end()) return;
  std::string list;
  for (const auto& r : roles) list += (list.empty() ? "" : ", ") + r;
  FF_FAIL("checkpoint '%s' holds no model '%s' (it holds: %s); was it written by another recipe?", folder.c_str(),
          role.c_str(), list.empty() ? "none" : list.c_str());
}
}  // namespace

std::vector<std::string> checkpoint_roles(const std::string& folder) { return roles_of(read_meta(folder)); }

void load_checkpoint_tensors(const std::string& folder, const CheckpointContents& contents) {
  json meta = read_meta(folder);
  check_role_present(folder, meta, contents.role);
  ChunkIndex model(folder, meta, "model", contents.role);
  for (Param& p : contents.params->params())
    model.load(p.name, p.global_shape.vec(), p.local_offset.vec(), p.local_shape.vec(), p.value);
  for (const StateBuffer& b : contents.buffers) {
    const std::vector<int64_t> shape{static_cast<int64_t>(b.data->size())};
    model.load(b.name, shape, {0}, shape, b.data->data());
  }
  if (!contents.exp_avg) return;
  ChunkIndex optim(folder, meta, "optim", contents.role);
  FF_CHECK(!optim.files.empty(), "checkpoint '%s' holds no optimizer state (weights only); it cannot resume training",
           folder.c_str());
  for (Param& p : contents.params->params()) {
    if (!p.trainable) continue;
    optim.load(p.name + ".exp_avg", p.global_shape.vec(), p.local_offset.vec(), p.local_shape.vec(),
               contents.exp_avg->data() + p.offset);
    optim.load(p.name + ".exp_avg_sq", p.global_shape.vec(), p.local_offset.vec(), p.local_shape.vec(),
               contents.exp_avg_sq->data() + p.offset);
  }
}

std::map<std::string, HostTensor> read_checkpoint_model(const std::string& folder, const std::string& role) {
  json meta = read_meta(folder);
  check_role_present(folder, meta, role);
  ChunkIndex model(folder, meta, "model", role);
  std::map<std::string, HostTensor> out;
  for (const auto& [name, chunks] : model.chunks) {
    if (is_training_only_name(name)) continue;  // the recipe's, not the model's
    HostTensor t;
    t.shape = chunks.front().global_shape;
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    t.data.resize(static_cast<size_t>(n));
    model.load(name, t.shape, std::vector<int64_t>(t.shape.size(), 0), t.shape, t.data.data());
    out[name] = std::move(t);
  }
  return out;
}

}  // namespace ff
