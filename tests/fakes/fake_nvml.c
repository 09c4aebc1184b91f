/*
 * A fake libnvidia-ml.so.1 for the tests and `make demo`: the real nvidia-ml-py (pynvml)
 * ctypes code path runs against it. Device state comes from the text file named by
 * $FAKE_NVML_STATE, re-read on every call, so a test can change free memory while the agent
 * is loading a model.
 *
 * State file (one item per line, '#' starts a comment; devharness/fake_nvml.py writes it):
 *   init_result <code>            NVML return code of nvmlInit (0 = success, 9 = driver not loaded)
 *   driver_version <text>
 *   memory_v2 <0|1>               whether nvmlDeviceGetMemoryInfo_v2 is supported
 *   gpu <uuid> <total> <free> <mig> <name...>
 *                                 mig: -1 = MIG not supported, 0 = disabled, 1 = enabled
 *   mig <gpu position> <slot> <uuid> <total> <free> <name...>
 *                                 a MIG instance of the gpu at that position (0-based)
 *   cc <gpu position> <major> <minor>
 *                                 CUDA compute capability of that gpu (and its MIG
 *                                 instances); without it: Not Supported
 *
 * Only the entry points the agent uses are served; pynvml reports any other as
 * "Function Not Found". A missing state file makes nvmlInit fail with "Driver Not Loaded".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
#define NVML_ERROR_UNKNOWN 999

#define MAX_GPUS 16
#define MAX_MIG 7
#define TEXT 96
#define GPU_BASE 0x10000u
#define MIG_BASE 0x20000u

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} memory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} memory_v2_t;

typedef struct {
    int present;
    char uuid[TEXT];
    char name[TEXT];
    unsigned long long total;
    unsigned long long free;
} mig_t;

typedef struct {
    char uuid[TEXT];
    char name[TEXT];
    unsigned long long total;
    unsigned long long free;
    int mig_mode;
    mig_t mig[MAX_MIG];
    int cc_major; /* -1: unknown */
    int cc_minor;
} gpu_t;

typedef struct {
    int init_result;
    int memory_v2;
    char driver[TEXT];
    int count;
    gpu_t gpus[MAX_GPUS];
} state_t;

static int initialized = 0;

static void copy_text(char *dst, const char *src) {
    size_t n = strcspn(src, "\r\n");
    if (n >= TEXT) n = TEXT - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Read the state file; 0 on success, -1 when it cannot be read. */
static int load_state(state_t *st) {
    memset(st, 0, sizeof(*st));
    st->memory_v2 = 1;
    strcpy(st->driver, "999.99.99-fake");
    const char *path = getenv("FAKE_NVML_STATE");
    if (path == NULL || path[0] == '\0') return -1;
    FILE *f = fopen(path, "r");
    if (f == NULL) return -1;
    char line[512];
    while (fgets(line, sizeof(line), f) != NULL) {
        char uuid[TEXT];
        unsigned long long total, free_bytes;
        int mig, gpu, slot, major, minor, used = 0;
        if (line[0] == '#' || line[0] == '\n') continue;
        if (sscanf(line, "init_result %d", &st->init_result) == 1) continue;
        if (sscanf(line, "memory_v2 %d", &st->memory_v2) == 1) continue;
        if (strncmp(line, "driver_version ", 15) == 0) {
            copy_text(st->driver, line + 15);
            continue;
        }
        if (st->count < MAX_GPUS &&
            sscanf(line, "gpu %95s %llu %llu %d %n", uuid, &total, &free_bytes, &mig, &used) == 4 &&
            used > 0) {
            gpu_t *g = &st->gpus[st->count++];
            copy_text(g->uuid, uuid);
            copy_text(g->name, line + used);
            g->total = total;
            g->free = free_bytes;
            g->mig_mode = mig;
            g->cc_major = -1;
            continue;
        }
        if (sscanf(line, "cc %d %d %d", &gpu, &major, &minor) == 3) {
            if (gpu >= 0 && gpu < st->count && major >= 0 && minor >= 0) {
                st->gpus[gpu].cc_major = major;
                st->gpus[gpu].cc_minor = minor;
            }
            continue;
        }
        if (sscanf(line, "mig %d %d %95s %llu %llu %n", &gpu, &slot, uuid, &total, &free_bytes,
                   &used) == 5 &&
            used > 0 && gpu >= 0 && gpu < st->count && slot >= 0 && slot < MAX_MIG) {
            mig_t *m = &st->gpus[gpu].mig[slot];
            m->present = 1;
            copy_text(m->uuid, uuid);
            copy_text(m->name, line + used);
            m->total = total;
            m->free = free_bytes;
        }
    }
    fclose(f);
    return 0;
}

/* Resolve a handle to its entry in a freshly read state. */
static nvmlReturn_t resolve(nvmlDevice_t device, state_t *st, gpu_t **gpu, mig_t **mig) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (load_state(st) != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    uintptr_t h = (uintptr_t)device;
    *gpu = NULL;
    *mig = NULL;
    if (h >= GPU_BASE && h < GPU_BASE + MAX_GPUS) {
        unsigned int i = (unsigned int)(h - GPU_BASE);
        if (i >= (unsigned int)st->count) return NVML_ERROR_INVALID_ARGUMENT;
        *gpu = &st->gpus[i];
        return NVML_SUCCESS;
    }
    if (h >= MIG_BASE && h < MIG_BASE + MAX_GPUS * 256) {
        unsigned int i = (unsigned int)((h - MIG_BASE) / 256), slot = (unsigned int)((h - MIG_BASE) % 256);
        if (i >= (unsigned int)st->count || slot >= MAX_MIG || !st->gpus[i].mig[slot].present)
            return NVML_ERROR_INVALID_ARGUMENT;
        *gpu = &st->gpus[i];
        *mig = &st->gpus[i].mig[slot];
        return NVML_SUCCESS;
    }
    return NVML_ERROR_INVALID_ARGUMENT;
}

static nvmlReturn_t put_text(char *out, unsigned int length, const char *text) {
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, text);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    state_t st;
    if (load_state(&st) != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (st.init_result != NVML_SUCCESS) return st.init_result;
    initialized++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    initialized--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
        case NVML_SUCCESS: return "Success";
        case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
        case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
        case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
        case NVML_ERROR_NOT_FOUND: return "Not Found";
        case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
        case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
        case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument Version Mismatch";
        default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    state_t st;
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (load_state(&st) != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    return put_text(version, length, st.driver);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    state_t st;
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (load_state(&st) != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    *count = (unsigned int)st.count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    state_t st;
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (load_state(&st) != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (index >= (unsigned int)st.count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = (nvmlDevice_t)(uintptr_t)(GPU_BASE + index);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    state_t st;
    gpu_t *gpu;
    mig_t *mig;
    nvmlReturn_t ret = resolve(device, &st, &gpu, &mig);
    if (ret != NVML_SUCCESS) return ret;
    if (index == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (mig != NULL) return NVML_ERROR_NOT_SUPPORTED; /* as the real library does for MIG handles */
    *index = (unsigned int)(gpu - st.gpus);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    state_t st;
    gpu_t *gpu;
    mig_t *mig;
    nvmlReturn_t ret = resolve(device, &st, &gpu, &mig);
    if (ret != NVML_SUCCESS) return ret;
    return put_text(name, length, mig != NULL ? mig->name : gpu->name);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    state_t st;
    gpu_t *gpu;
    mig_t *mig;
    nvmlReturn_t ret = resolve(device, &st, &gpu, &mig);
    if (ret != NVML_SUCCESS) return ret;
    return put_text(uuid, length, mig != NULL ? mig->uuid : gpu->uuid);
}

static nvmlReturn_t read_memory(nvmlDevice_t device, unsigned long long *total,
                                unsigned long long *free_bytes, int *v2) {
    state_t st;
    gpu_t *gpu;
    mig_t *mig;
    nvmlReturn_t ret = resolve(device, &st, &gpu, &mig);
    if (ret != NVML_SUCCESS) return ret;
    *total = mig != NULL ? mig->total : gpu->total;
    *free_bytes = mig != NULL ? mig->free : gpu->free;
    if (*free_bytes > *total) *free_bytes = *total;
    *v2 = st.memory_v2;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, memory_t *memory) {
    unsigned long long total, free_bytes;
    int v2;
    nvmlReturn_t ret = read_memory(device, &total, &free_bytes, &v2);
    if (ret != NVML_SUCCESS) return ret;
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = total;
    memory->free = free_bytes;
    memory->used = total - free_bytes;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, memory_v2_t *memory) {
    unsigned long long total, free_bytes;
    int v2;
    nvmlReturn_t ret = read_memory(device, &total, &free_bytes, &v2);
    if (ret != NVML_SUCCESS) return ret;
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (!v2) return NVML_ERROR_NOT_SUPPORTED;
    if (memory->version != 0x02000028u) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = total;
    memory->reserved = 0;
    memory->free = free_bytes;
    memory->used = total - free_bytes;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    state_t st;
    gpu_t *gpu;
    mig_t *mig;
    nvmlReturn_t ret = resolve(device, &st, &gpu, &mig);
    if (ret != NVML_SUCCESS) return ret;
    if (current == NULL || pending == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (mig != NULL || gpu->mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    *current = (unsigned int)gpu->mig_mode;
    *pending = (unsigned int)gpu->mig_mode;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    state_t st;
    gpu_t *gpu;
    mig_t *mig;
    nvmlReturn_t ret = resolve(device, &st, &gpu, &mig);
    if (ret != NVML_SUCCESS) return ret;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (mig != NULL || gpu->mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    *count = gpu->mig_mode == 1 ? MAX_MIG : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *mig_device) {
    state_t st;
    gpu_t *gpu;
    mig_t *mig;
    nvmlReturn_t ret = resolve(device, &st, &gpu, &mig);
    if (ret != NVML_SUCCESS) return ret;
    if (mig_device == NULL || mig != NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu->mig_mode != 1) return NVML_ERROR_NOT_SUPPORTED;
    if (index >= MAX_MIG) return NVML_ERROR_INVALID_ARGUMENT;
    if (!gpu->mig[index].present) return NVML_ERROR_NOT_FOUND;
    unsigned int position = (unsigned int)(gpu - st.gpus);
    *mig_device = (nvmlDevice_t)(uintptr_t)(MIG_BASE + position * 256 + index);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    state_t st;
    gpu_t *gpu;
    mig_t *mig;
    nvmlReturn_t ret = resolve(device, &st, &gpu, &mig);
    if (ret != NVML_SUCCESS) return ret;
    if (major == NULL || minor == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu->cc_major < 0) return NVML_ERROR_NOT_SUPPORTED;
    *major = gpu->cc_major; /* a MIG handle: its GPU's */
    *minor = gpu->cc_minor;
    return NVML_SUCCESS;
}
