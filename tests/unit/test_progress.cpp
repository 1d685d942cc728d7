// The progress reporter's arithmetic (rate, ETA, percentage) and its throttling, driven by an
// injected clock: nothing here sleeps or times anything.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "io/progress.h"

namespace ff {
namespace {

struct Fake {
  double t = 100.0;  // any origin: the Progress measures from its construction
  std::vector<std::string> writes;
  ProgressOptions options(bool print = true) {
    ProgressOptions o;
    o.print = print;
    o.interval_s = 0.25;
    o.clock = [this] { return t; };
    o.write = [this](const std::string& s) { writes.push_back(s); };
    return o;
  }
};

TEST(Progress, RateAndEtaFromTheUnitsDoneSoFar) {
  Fake f;
  Progress p("eval", 1000, ProgressUnit::count, "windows", f.options());
  EXPECT_EQ(p.rate(), 0.0);
  EXPECT_LT(p.eta_s(), 0);  // no time has passed: no rate, no ETA
  f.t += 2.0;
  p.advance(250);
  EXPECT_DOUBLE_EQ(p.rate(), 125.0);
  EXPECT_DOUBLE_EQ(p.eta_s(), 6.0);  // 750 left at 125/s
  f.t += 2.0;
  p.advance(250);
  EXPECT_DOUBLE_EQ(p.rate(), 125.0);
  EXPECT_DOUBLE_EQ(p.eta_s(), 4.0);
  EXPECT_EQ(p.text(), "eval: 500/1000 windows (50%) | 125 windows/s | ETA 0m04s");
  p.advance(600);  // past the total: nothing left, not a negative ETA
  EXPECT_DOUBLE_EQ(p.eta_s(), 0.0);
}

TEST(Progress, UnknownTotalHasNoEtaOrPercentage) {
  Fake f;
  Progress p("generate", 0, ProgressUnit::count, "tokens", f.options());
  f.t += 4.0;
  p.advance(10);
  EXPECT_LT(p.eta_s(), 0);
  EXPECT_EQ(p.text(), "generate: 10 tokens | 2.5 tokens/s");
}

TEST(Progress, BytesAreShownInDecimalUnits) {
  Fake f;
  Progress p("checkpoint", 3'000'000'000, ProgressUnit::bytes, "", f.options());
  f.t += 10.0;
  p.advance(1'500'000'000);
  EXPECT_EQ(p.text(), "checkpoint: 1.50 GB of 3.00 GB (50%) | 150.0 MB/s | ETA 0m10s");
}

TEST(Progress, RewritesAtMostOncePerIntervalAndNoneBeforeTheFirst) {
  Fake f;
  Progress p("preprocess", 100, ProgressUnit::count, "documents", f.options());
  p.advance(1);  // at the start: no line for work that ends at once
  f.t += 0.1;
  p.advance(1);
  EXPECT_TRUE(f.writes.empty());
  f.t += 0.2;  // 0.3 s since the start
  p.advance(1);
  ASSERT_EQ(f.writes.size(), 1u);
  EXPECT_EQ(f.writes[0].substr(0, 1), "\r");
  for (int i = 0; i < 100; ++i) {  // 100 advances within 0.2 s: no rewrite
    f.t += 0.002;
    p.advance(0);
  }
  EXPECT_EQ(f.writes.size(), 1u);
  f.t += 0.1;  // 0.3 s since the last rewrite
  p.advance(1);
  EXPECT_EQ(f.writes.size(), 2u);
  EXPECT_EQ(p.rewrites(), 2);
  // Over 10 simulated seconds of advances every millisecond: at most 4 rewrites a second.
  for (int i = 0; i < 10000; ++i) {
    f.t += 0.001;
    p.advance(0);
  }
  EXPECT_LE(p.rewrites(), 2 + 40);
  EXPECT_GE(p.rewrites(), 2 + 39);
}

TEST(Progress, ShorterLinesBlankTheRestAndFinishClearsTheLine) {
  Fake f;
  Progress p("x", 0, ProgressUnit::count, "u", f.options());
  f.t += 1.0;
  p.advance(123456);  // a long line
  f.t += 1000.0;
  p.advance(0);  // rate falls: a shorter line, padded to the first one's width
  ASSERT_EQ(f.writes.size(), 2u);
  EXPECT_EQ(f.writes[0].size(), f.writes[1].size());
  p.finish();
  ASSERT_EQ(f.writes.size(), 3u);
  EXPECT_EQ(f.writes[2], "\r" + std::string(f.writes[0].size() - 1, ' ') + "\r");
  p.finish();  // once only
  EXPECT_EQ(f.writes.size(), 3u);
}

TEST(Progress, NotPrintingStillCountsAndWritesNothing) {
  Fake f;
  {
    Progress p("quiet", 10, ProgressUnit::count, "steps", f.options(/*print=*/false));
    for (int i = 0; i < 10; ++i) {
      f.t += 1.0;
      p.advance(1);
    }
    EXPECT_EQ(p.done(), 10);
    EXPECT_DOUBLE_EQ(p.rate(), 1.0);
  }  // the destructor finishes: still nothing
  EXPECT_TRUE(f.writes.empty());
  // A Progress that never rewrote has nothing to clear.
  Progress q("fast", 10, ProgressUnit::count, "steps", f.options());
  q.advance(10);
  q.finish();
  EXPECT_TRUE(f.writes.empty());
}

TEST(Progress, DurationsAsTheTrainerPrintsThem) {
  EXPECT_EQ(format_duration(0), "0m00s");
  EXPECT_EQ(format_duration(65.4), "1m05s");
  EXPECT_EQ(format_duration(3599.6), "1h00m");
  EXPECT_EQ(format_duration(2 * 3600 + 7 * 60 + 3), "2h07m");
}

}  // namespace
}  // namespace ff
