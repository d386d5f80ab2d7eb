// llamacpp_logits: runs a GGUF model through llama.cpp's public API with the fixture protocol
// of /work/shared/fixtures (llamacpp.json `settings`) and writes the logits as .npy, so kt's
// forward pass can be compared with llama.cpp row by row.
//
// Protocol: the prompt as one batch with logits for every position, then each decode token
// alone (teacher forcing, not llama.cpp's own argmax), through llama.cpp's KV cache; F32 KV
// cache, flash attention off, n_ctx 40, n_batch 64, 2 threads unless told otherwise.
//
//   llamacpp_logits --model M.gguf --prompt 0,267,... --decode 20,476,... --out L.npy
//                   [--no-repack] [--flash-attn] [--threads N] [--dump DIR]
//
// --no-repack loads the weights without llama.cpp's extra buffer types (the CPU "REPACK"
// re-layout and its interleaved GEMV/GEMM kernels), so every quantized matmul takes ggml's
// plain vec_dot path.
// --flash-attn turns llama.cpp's fused attention on (same math, another f32 evaluation order
// and exp), to measure how far llama.cpp moves from itself.
// --dump DIR writes every f32 tensor the graph computes, per llama_decode call, as
// DIR/<call>-<order>-<node name>.npy (ggml's eval callback), to bisect a difference stage by stage.

#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_IDS 4096

struct options {
    const char *model;
    const char *out;
    const char *dump_dir;
    int32_t prompt[MAX_IDS];
    int n_prompt;
    int32_t decode[MAX_IDS];
    int n_decode;
    int threads;
    int repack;
    int flash_attn;
};

static void die(const char *what) {
    fprintf(stderr, "llamacpp_logits: %s\n", what);
    exit(1);
}

// Parses "1,2,3" into ids; returns the count.
static int parse_ids(const char *s, int32_t *ids) {
    int n = 0;
    while (*s) {
        if (n == MAX_IDS) die("too many ids");
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX) die("bad id list");
        ids[n++] = (int32_t)v;
        s = end;
        if (*s == ',') s++;
        else if (*s) die("bad id list");
    }
    return n;
}

static void parse(int argc, char **argv, struct options *o) {
    memset(o, 0, sizeof *o);
    o->threads = 2;
    o->repack = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-repack")) { o->repack = 0; continue; }
        if (!strcmp(a, "--flash-attn")) { o->flash_attn = 1; continue; }
        if (!v) die("option without value");
        if (!strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "--dump")) o->dump_dir = v;
        else if (!strcmp(a, "--prompt")) o->n_prompt = parse_ids(v, o->prompt);
        else if (!strcmp(a, "--decode")) o->n_decode = parse_ids(v, o->decode);
        else if (!strcmp(a, "--threads")) o->threads = atoi(v);
        else die("unknown option");
        i++;
    }
    if (!o->model || !o->out || o->n_prompt == 0) die("need --model, --out and --prompt");
    if (o->threads < 1) die("bad --threads");
}

// Writes a little-endian float32 C-order .npy of the given shape (at most 4 dimensions).
static int write_npy(const char *path, const float *data, const int64_t *shape, int ndim) {
    char shape_txt[128] = "";
    size_t count = 1;
    for (int d = 0; d < ndim; d++) {
        char one[32];
        // numpy's tuple syntax: "(n,)" for one dimension, "(a, b)" for more
        snprintf(one, sizeof one, "%s%lld%s", d ? " " : "", (long long)shape[d],
                 (ndim == 1 || d + 1 < ndim) ? "," : "");
        strcat(shape_txt, one);
        count *= (size_t)shape[d];
    }
    char header[256];
    int len = snprintf(header, sizeof header,
                       "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", shape_txt);
    // magic (6) + version (2) + header length (2) + header + padding + '\n', a multiple of 64
    int total = 10 + len + 1;
    int pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    uint16_t hlen = (uint16_t)(len + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fwrite(&hlen, 2, 1, f);
    fwrite(header, 1, (size_t)len, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    size_t wrote = fwrite(data, sizeof(float), count, f);
    return fclose(f) == 0 && wrote == count ? 0 : -1;
}

struct dump_state {
    const char *dir;
    int call;
    int node; // position of the tensor in this call's graph order, so repeated names do not collide
    float *buf;
    size_t cap;
};

// ggml eval callback: asks for every f32 tensor, then writes it (ne[3], ne[2], ne[1], ne[0]).
static bool dump_tensor(struct ggml_tensor *t, bool ask, void *user) {
    struct dump_state *st = user;
    if (ask) return t->type == GGML_TYPE_F32;
    if (!ggml_is_contiguous(t)) return true;
    size_t n = (size_t)ggml_nelements(t);
    if (n > st->cap) {
        st->buf = realloc(st->buf, n * sizeof(float));
        if (!st->buf) die("out of memory");
        st->cap = n;
    }
    ggml_backend_tensor_get(t, st->buf, 0, n * sizeof(float));
    char name[512];
    snprintf(name, sizeof name, "%s/%02d-%04d-%s.npy", st->dir, st->call, st->node++, t->name);
    for (char *c = name + strlen(st->dir) + 1; *c; c++)
        if (*c == '/' || *c == ' ') *c = '_';
    int64_t shape[4] = {t->ne[3], t->ne[2], t->ne[1], t->ne[0]};
    if (write_npy(name, st->buf, shape, 4) != 0) die("cannot write a dump file");
    return true;
}

static void quiet_log(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

// Loading progress stays off stderr (llama.cpp prints dots when no callback is given).
static bool no_progress(float progress, void *user) {
    (void)progress;
    (void)user;
    return true;
}

int main(int argc, char **argv) {
    struct options o;
    parse(argc, argv, &o);
    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.use_extra_bufts = o.repack != 0;
    mp.progress_callback = no_progress;
    struct llama_model *model = llama_model_load_from_file(o.model, mp);
    if (!model) die("cannot load the model");

    struct dump_state st = {o.dump_dir, 0, 0, NULL, 0};
    if (o.dump_dir) mkdir(o.dump_dir, 0755);

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 40;
    cp.n_batch = 64;
    cp.n_ubatch = 64;
    cp.n_threads = o.threads;
    cp.n_threads_batch = o.threads;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = o.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (o.dump_dir) {
        cp.cb_eval = dump_tensor;
        cp.cb_eval_user_data = &st;
    }
    if ((uint32_t)(o.n_prompt + o.n_decode) > cp.n_ctx) die("prompt + decode exceed n_ctx 40");
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) die("cannot create the context");

    const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    const int rows = o.n_prompt + o.n_decode;
    float *logits = malloc((size_t)rows * vocab * sizeof(float));
    if (!logits) die("out of memory");

    struct llama_batch batch = llama_batch_init(o.n_prompt, 0, 1);
    for (int i = 0; i < o.n_prompt; i++) {
        batch.token[i] = o.prompt[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = o.n_prompt;
    if (llama_decode(ctx, batch) != 0) die("prompt decode failed");
    for (int i = 0; i < o.n_prompt; i++)
        memcpy(logits + (size_t)i * vocab, llama_get_logits_ith(ctx, i), vocab * sizeof(float));

    for (int s = 0; s < o.n_decode; s++) {
        st.call++;
        st.node = 0;
        batch.token[0] = o.decode[s];
        batch.pos[0] = o.n_prompt + s;
        batch.n_seq_id[0] = 1;
        batch.seq_id[0][0] = 0;
        batch.logits[0] = 1;
        batch.n_tokens = 1;
        if (llama_decode(ctx, batch) != 0) die("decode step failed");
        memcpy(logits + (size_t)(o.n_prompt + s) * vocab, llama_get_logits_ith(ctx, 0),
               vocab * sizeof(float));
    }

    int64_t shape[2] = {rows, vocab};
    if (write_npy(o.out, logits, shape, 2) != 0) die("cannot write the output");
    fprintf(stderr, "wrote %s (%d x %d float32 logits, repack %s, flash-attn %s, %d threads)\n",
            o.out, rows, vocab, o.repack ? "on" : "off", o.flash_attn ? "on" : "off", o.threads);

    llama_batch_free(batch);
    free(logits);
    free(st.buf);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
