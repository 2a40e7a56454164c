// Greedy decoding with bitnet.cpp's libllama, for cross-checking GGUF files this project's
// `bitnet convert` writes: feeds prompt token ids (no BOS added), then takes the argmax
// `n` times, one token per step, and prints the new ids as JSON. Not part of the build;
// see tools/bitnetcpp/README.md.
//
//   cc greedy.c -I$BITNET/3rdparty/llama.cpp/include -I$BITNET/3rdparty/llama.cpp/ggml/include \
//      -L$LIB -lllama -Wl,-rpath,$LIB -o greedy
//   ./greedy MODEL.gguf N ID,ID,...
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static float margin(const float * x, int n, int best) {
    float second = -1e30f;
    for (int i = 0; i < n; i++) {
        if (i != best && x[i] > second) second = x[i];
    }
    return x[best] - second;
}

static int argmax(const float * x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) {
        if (x[i] > x[best]) best = i;
    }
    return best;
}

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf N ID,ID,...\n", argv[0]);
        return 2;
    }
    int n_new = atoi(argv[2]);
    llama_token prompt[512];
    int n_prompt = 0;
    for (char * tok = strtok(argv[3], ","); tok && n_prompt < 512; tok = strtok(NULL, ",")) {
        prompt[n_prompt++] = atoi(tok);
    }
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model * model = llama_load_model_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512;
    cp.n_batch = 512;
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    struct llama_context * ctx = llama_new_context_with_model(model, cp);
    int n_vocab = llama_n_vocab(model);
    if (llama_decode(ctx, llama_batch_get_one(prompt, n_prompt, 0, 0)) != 0) {
        fprintf(stderr, "decode failed\n");
        return 1;
    }
    printf("{\"prompt_ids\": [");
    for (int i = 0; i < n_prompt; i++) printf(i ? ", %d" : "%d", prompt[i]);
    printf("], \"new_tokens\": [");
    float * margins = calloc(n_new, sizeof(float));
    int pos = n_prompt;
    for (int step = 0; step < n_new; step++) {
        const float * logits = llama_get_logits_ith(ctx, -1);
        if (step == 0 && getenv("GREEDY_DUMP_LOGITS")) {
            // The prompt's last-position logits, float32, for comparing engines.
            FILE * f = fopen(getenv("GREEDY_DUMP_LOGITS"), "wb");
            if (f) {
                fwrite(logits, sizeof(float), n_vocab, f);
                fclose(f);
            }
        }
        llama_token next = argmax(logits, n_vocab);
        margins[step] = margin(logits, n_vocab, next);
        printf(step ? ", %d" : "%d", next);
        if (llama_decode(ctx, llama_batch_get_one(&next, 1, pos, 0)) != 0) {
            fprintf(stderr, "decode failed\n");
            return 1;
        }
        pos++;
    }
    printf("], \"top2_margin\": [");
    for (int step = 0; step < n_new; step++) printf(step ? ", %.5f" : "%.5f", margins[step]);
    printf("]}\n");
    free(margins);
    llama_free(ctx);
    llama_free_model(model);
    return 0;
}
