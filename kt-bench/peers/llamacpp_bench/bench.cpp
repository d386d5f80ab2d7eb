// llamacpp-bench: prompt-processing and generation speed of llama.cpp on one GGUF, measured
// the way llama-bench measures its pp/tg tests, so kt-bench prefill/decode can be put next
// to it on the same file and thread count.
//
//   pp N: one llama_decode call chain over N random prompt tokens (in n_batch pieces) on an
//         empty cache; tokens/s = N / time.
//   tg N: N single-token llama_decode calls on an empty cache, each on a random token
//         (no sampling: only the forward pass is timed); tokens/s = N / time.
// Each test first runs untimed as a warm-up (page faults, buffer allocation; the whole
// prompt for pp, 4 steps for tg), then -r times, clearing the cache before every run. Output: one JSON object per test on stdout.
//
// Usage: llamacpp-bench -m FILE [-p 512] [-n 128] [-t THREADS] [-r 3] [-b 2048] [-ub 512]
//                       [-xb 1] (0: no extra weight buffer types: no repacking)
//                       [-v 0]  (1: llama.cpp's log on stderr)

#include "llama.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

struct Options {
    std::string model;
    int n_prompt = 512;
    int n_gen = 128;
    int threads = 4;
    int reps = 3;
    int n_batch = 2048;
    int n_ubatch = 512;
    bool extra_bufts = true;  // llama.cpp's weight repacking / AMX buffers (its default)
    bool verbose = false;
};

[[noreturn]] void usage(const char *why) {
    std::fprintf(stderr, "llamacpp-bench: %s\nusage: llamacpp-bench -m FILE [-p N] [-n N] [-t N] [-r N] [-b N] [-ub N] [-xb 0|1] [-v 0|1]\n", why);
    std::exit(2);
}

int positive(const char *flag, const char *value, bool zero_ok) {
    char *end = nullptr;
    long v = std::strtol(value, &end, 10);
    if (end == value || *end != '\0' || v < (zero_ok ? 0 : 1) || v > 1000000) {
        std::string msg = std::string(flag) + " needs a " + (zero_ok ? "non-negative" : "positive") + " integer, got '" + value + "'";
        usage(msg.c_str());
    }
    return static_cast<int>(v);
}

Options parse(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (i + 1 >= argc) usage(("missing value after " + a).c_str());
        const char *v = argv[++i];
        if (a == "-m") o.model = v;
        else if (a == "-p") o.n_prompt = positive("-p", v, true);
        else if (a == "-n") o.n_gen = positive("-n", v, true);
        else if (a == "-t") o.threads = positive("-t", v, false);
        else if (a == "-r") o.reps = positive("-r", v, false);
        else if (a == "-b") o.n_batch = positive("-b", v, false);
        else if (a == "-ub") o.n_ubatch = positive("-ub", v, false);
        else if (a == "-xb") o.extra_bufts = positive("-xb", v, true) != 0;
        else if (a == "-v") o.verbose = positive("-v", v, true) != 0;
        else usage(("unknown option " + a).c_str());
    }
    if (o.model.empty()) usage("-m FILE is required");
    return o;
}

// Quiet llama.cpp's loader chatter (unless -v 1); errors still reach stderr.
void log_to_stderr(enum ggml_log_level level, const char *text, void *verbose) {
    if (level == GGML_LOG_LEVEL_ERROR || *static_cast<bool *>(verbose)) std::fputs(text, stderr);
}

double now_s() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

bool decode_prompt(llama_context *ctx, std::vector<llama_token> &tokens, int n_batch) {
    for (size_t i = 0; i < tokens.size(); i += n_batch) {
        int n = static_cast<int>(std::min<size_t>(n_batch, tokens.size() - i));
        if (llama_decode(ctx, llama_batch_get_one(tokens.data() + i, n)) != 0) return false;
    }
    llama_synchronize(ctx);
    return true;
}

bool decode_steps(llama_context *ctx, std::vector<llama_token> &tokens) {
    for (auto &t : tokens) {
        if (llama_decode(ctx, llama_batch_get_one(&t, 1)) != 0) return false;
    }
    llama_synchronize(ctx);
    return true;
}

void report(const Options &o, const char *kind, int n, const std::vector<double> &secs, const llama_model *model) {
    double sum = 0;
    for (double s : secs) sum += n / s;
    char desc[256];
    llama_model_desc(model, desc, sizeof desc);
    std::printf("{\"test\":\"%s%d\",\"n_prompt\":%d,\"n_gen\":%d,\"threads\":%d,\"n_batch\":%d,\"n_ubatch\":%d,"
                "\"extra_bufts\":%s,\"model\":\"%s\",\"model_bytes\":%llu,\"avg_ts\":%.4f,\"samples_s\":[",
                kind, n, kind[0] == 'p' ? n : 0, kind[0] == 't' ? n : 0, o.threads, o.n_batch, o.n_ubatch, o.extra_bufts ? "true" : "false", desc,
                static_cast<unsigned long long>(llama_model_size(model)), sum / secs.size());
    for (size_t i = 0; i < secs.size(); ++i) std::printf("%s%.6f", i ? "," : "", secs[i]);
    std::printf("],\"system\":\"%s\"}\n", llama_print_system_info());
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char **argv) {
    Options o = parse(argc, argv);
    llama_log_set(log_to_stderr, &o.verbose);
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.use_extra_bufts = o.extra_bufts;
    llama_model *model = llama_model_load_from_file(o.model.c_str(), mp);
    if (!model) {
        std::fprintf(stderr, "llamacpp-bench: cannot load %s\n", o.model.c_str());
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(std::max(o.n_prompt + o.n_gen, 16));
    cp.n_batch = static_cast<uint32_t>(o.n_batch);
    cp.n_ubatch = static_cast<uint32_t>(o.n_ubatch);
    cp.n_threads = o.threads;
    cp.n_threads_batch = o.threads;
    llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        std::fprintf(stderr, "llamacpp-bench: cannot create a context\n");
        return 1;
    }

    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    std::mt19937 rng(42);
    std::uniform_int_distribution<int> pick(0, n_vocab - 1);
    auto random_tokens = [&](int n) {
        std::vector<llama_token> t(n);
        for (auto &x : t) x = pick(rng);
        return t;
    };
    llama_memory_t mem = llama_get_memory(ctx);

    struct Test { const char *kind; int n; };
    for (Test test : {Test{"pp", o.n_prompt}, Test{"tg", o.n_gen}}) {
        if (test.n == 0) continue;
        std::vector<double> secs;
        for (int rep = -1; rep < o.reps; ++rep) {  // rep -1: warm-up, not reported
            llama_memory_clear(mem, false);
            const bool warmup = rep < 0;
            std::vector<llama_token> toks = random_tokens(warmup && test.kind[0] == 't' ? std::min(test.n, 4) : test.n);
            double t0 = now_s();
            bool ok = test.kind[0] == 'p' ? decode_prompt(ctx, toks, o.n_batch) : decode_steps(ctx, toks);
            double dt = now_s() - t0;
            if (!ok) {
                std::fprintf(stderr, "llamacpp-bench: llama_decode failed in %s%d\n", test.kind, test.n);
                return 1;
            }
            if (!warmup) secs.push_back(dt);
        }
        report(o, test.kind, test.n, secs, model);
    }
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
