/* deltadit C ABI: for C, Go (cgo), Rust (bindgen), C# (P/Invoke).
 *
 * Every call returns DDT_OK or an error code; the message of the last failed call on this thread is
 * ddt_last_error(). Handles are opaque; a bundle is thread-safe (many threads may call ddt_generate
 * on one), a request is not. */
#ifndef DELTADIT_H
#define DELTADIT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  DDT_OK = 0,
  DDT_ERROR = 1,          /* bundle or input refused (message says what and how to fix it) */
  DDT_INVALID_ARGUMENT = 2, /* a NULL handle or pointer */
  DDT_OUT_OF_MEMORY = 3
} ddt_status;

typedef struct ddt_bundle ddt_bundle;
typedef struct ddt_request ddt_request;
typedef struct ddt_result ddt_result;

const char* ddt_last_error(void);

/* provider: "cpu" (NULL = cpu), "cuda" or "tensorrt". */
ddt_status ddt_open(const char* path, const char* provider, ddt_bundle** out);
void ddt_close(ddt_bundle* bundle);

ddt_status ddt_request_new(ddt_request** out);
void ddt_request_free(ddt_request* request);
ddt_status ddt_request_set_prompt(ddt_request* request, const char* prompt);
ddt_status ddt_request_set_class(ddt_request* request, int64_t class_id);
ddt_status ddt_request_set_seed(ddt_request* request, uint64_t seed);
ddt_status ddt_request_set_guidance(ddt_request* request, float scale);
ddt_status ddt_request_set_cache(ddt_request* request, int enabled);
/* Initial noise (C*H*W floats, standard normal, before the scheduler's init_noise_sigma). */
ddt_status ddt_request_set_noise(ddt_request* request, const float* data, int64_t count);
/* Conditioning tensor for one image (batch 1). uncond != 0: the unconditional input. */
ddt_status ddt_request_set_float(ddt_request* request, const char* name, int uncond, const float* data,
                                 const int64_t* shape, int rank);
ddt_status ddt_request_set_int64(ddt_request* request, const char* name, int uncond, const int64_t* data,
                                 const int64_t* shape, int rank);

ddt_status ddt_generate(const ddt_bundle* bundle, const ddt_request* request, ddt_result** out);
void ddt_result_free(ddt_result* result);
/* Final latents: pointer valid until ddt_result_free; shape has `rank` entries (rank <= 8). */
const float* ddt_result_latents(const ddt_result* result, int64_t* shape, int* rank);
/* Image (H, W, C) in [0, 1] for pixel-space bundles, else NULL. */
const float* ddt_result_image(const ddt_result* result, int* height, int* width, int* channels);
double ddt_result_segment_seconds(const ddt_result* result);
double ddt_result_total_seconds(const ddt_result* result);

#ifdef __cplusplus
}
#endif
#endif /* DELTADIT_H */
