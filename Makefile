# Sluice build. Everything is found by convention, so adding a module needs no
# edit here:
#   common/<lib>/*.c, kernels/*.c + kernels/cpu/*.c  -> $(BUILD)/lib/libsl_<lib>.a
#   proto/*.proto                                      -> generated C in $(BUILD)/gen
#   services/<name>/*.c                                -> $(BUILD)/bin/sluice-<name>
#   services/<name>/*.c but main.c                     -> $(BUILD)/lib/libsl_svc_<name>.a (tests, benches)
#   tests/{unit,integration}/test_*.c (+ tests/harness) -> $(BUILD)/tests/.../test_*
#   bench/<name>.c, bench/<dir>/*.c                    -> $(BUILD)/bench/<name>
#   kernels/cuda/*.cu                                  -> $(BUILD)/lib/libsluice_cuda.so
#
# Targets: all (default), deps, test, check, check-asan, run, format, clean.
# Variables: BUILD=dir, SANITIZE=address,undefined, OPT=-O2, CUDA=0 to skip nvcc.

BUILD    ?= build
SANITIZE ?=
OPT      ?= -O2
CC       ?= cc
NVCC     ?= /usr/local/cuda/bin/nvcc
CUDA     ?= auto
ifeq ($(CUDA),auto)
  CUDA := $(if $(wildcard $(NVCC)),1,0)
endif

PKGS      := libnats libcurl libcjson ucx libprotobuf-c libpcre2-8 libxxhash openblas
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lcivetweb
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null)

CFLAGS  := -std=gnu11 -Wall -Wextra -Werror $(OPT) -g -D_GNU_SOURCE -pthread \
           -I. -I$(BUILD)/gen $(PKG_CFLAGS) -MMD -MP $(EXTRA_CFLAGS)
LDFLAGS := -pthread $(EXTRA_LDFLAGS)
LDLIBS  := $(PKG_LIBS) -ldl -lm
ifneq ($(SANITIZE),)
  CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
  LDFLAGS += -fsanitize=$(SANITIZE)
endif

# ---- libraries ---------------------------------------------------------------
LIBNAMES := $(notdir $(wildcard common/*))
define lib_template
$(1)_SRCS := $(wildcard common/$(1)/*.c)
$(1)_OBJS := $$(patsubst %.c,$(BUILD)/obj/%.o,$$($(1)_SRCS))
$(BUILD)/lib/libsl_$(1).a: $$($(1)_OBJS)
	@mkdir -p $$(@D)
	@rm -f $$@
	ar rcs $$@ $$^
endef
$(foreach l,$(LIBNAMES),$(eval $(call lib_template,$(l))))

kernels_SRCS := $(wildcard kernels/*.c kernels/cpu/*.c)
kernels_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(kernels_SRCS))
$(BUILD)/lib/libsl_kernels.a: $(kernels_OBJS)
	@mkdir -p $(@D)
	@rm -f $@
	ar rcs $@ $^

PROTOS     := $(wildcard proto/*.proto)
PROTO_C    := $(patsubst %.proto,$(BUILD)/gen/%.pb-c.c,$(PROTOS))
PROTO_H    := $(PROTO_C:.c=.h)
PROTO_OBJS := $(patsubst $(BUILD)/gen/%.c,$(BUILD)/obj/gen/%.o,$(PROTO_C))
$(BUILD)/gen/proto/%.pb-c.c $(BUILD)/gen/proto/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen $<
$(BUILD)/lib/libsl_proto.a: $(PROTO_OBJS)
	@mkdir -p $(@D)
	@rm -f $@
	ar rcs $@ $^

LIBS := $(foreach l,$(LIBNAMES),$(if $($(l)_SRCS),$(BUILD)/lib/libsl_$(l).a)) \
        $(if $(kernels_SRCS),$(BUILD)/lib/libsl_kernels.a) \
        $(if $(PROTOS),$(BUILD)/lib/libsl_proto.a)
LINK_LIBS := -Wl,--start-group $(LIBS) -Wl,--end-group

# ---- objects -------------------------------------------------------------------
$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -Wno-unused-parameter -c $< -o $@
$(BUILD)/obj/%.o: %.c | $(PROTO_H)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

# ---- programs ------------------------------------------------------------------
SERVICES := $(notdir $(patsubst %/,%,$(dir $(wildcard services/*/*.c))))
SERVICES := $(sort $(SERVICES))
BINS := $(patsubst %,$(BUILD)/bin/sluice-%,$(SERVICES))
define svc_template
$(BUILD)/bin/sluice-$(1): $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard services/$(1)/*.c)) $(LIBS)
	@mkdir -p $$(@D)
	$$(CC) $$(LDFLAGS) -o $$@ $$(filter %.o,$$^) $$(LINK_LIBS) $$(LDLIBS)
endef
$(foreach s,$(SERVICES),$(eval $(call svc_template,$(s))))

# Service logic (services/<name>/*.c except main.c) as libsl_svc_<name>.a, so
# unit tests and benchmarks can link a service's modules.
SVC_LIBS :=
define svclib_template
svc_$(1)_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(filter-out services/$(1)/main.c,$(wildcard services/$(1)/*.c)))
ifneq ($$(svc_$(1)_OBJS),)
SVC_LIBS += $(BUILD)/lib/libsl_svc_$(1).a
$(BUILD)/lib/libsl_svc_$(1).a: $$(svc_$(1)_OBJS)
	@mkdir -p $$(@D)
	@rm -f $$@
	ar rcs $$@ $$^
endif
endef
$(foreach s,$(SERVICES),$(eval $(call svclib_template,$(s))))
# sluice-prefill-worker links the decode worker's modules (model host, KV
# event publisher, load reporter) instead of copying them.
$(BUILD)/bin/sluice-prefill-worker: $(svc_decode-worker_OBJS)
TEST_LINK_LIBS := -Wl,--start-group $(SVC_LIBS) $(LIBS) -Wl,--end-group

BENCH_SINGLE := $(patsubst bench/%.c,%,$(wildcard bench/*.c))
BENCH_DIRS   := $(sort $(notdir $(patsubst %/,%,$(dir $(wildcard bench/*/*.c)))))
BENCHES := $(patsubst %,$(BUILD)/bench/%,$(BENCH_SINGLE) $(BENCH_DIRS))
$(foreach b,$(BENCH_SINGLE),$(eval $(BUILD)/bench/$(b): $(BUILD)/obj/bench/$(b).o $(LIBS) $(SVC_LIBS) ; @mkdir -p $$(@D) && $$(CC) $$(LDFLAGS) -o $$@ $$(filter %.o,$$^) $$(TEST_LINK_LIBS) $$(LDLIBS)))
$(foreach b,$(BENCH_DIRS),$(eval $(BUILD)/bench/$(b): $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard bench/$(b)/*.c)) $(LIBS) ; @mkdir -p $$(@D) && $$(CC) $$(LDFLAGS) -o $$@ $$(filter %.o,$$^) $$(LINK_LIBS) $$(LDLIBS)))

# ---- tests ---------------------------------------------------------------------
HARNESS_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tests/harness/*.c))
TEST_SRCS := $(wildcard tests/unit/test_*.c tests/integration/test_*.c)
TESTS     := $(patsubst %.c,$(BUILD)/%,$(TEST_SRCS))
$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(HARNESS_OBJS) $(LIBS) $(SVC_LIBS)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(TEST_LINK_LIBS) $(LDLIBS) $(CHECK_LIBS)

# ---- CUDA backend (compiled always where nvcc exists; loaded only with a GPU) ----
CUDA_SRCS := $(wildcard kernels/cuda/*.cu)
CUDA_ARCH := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_100,code=sm_100 -gencode arch=compute_100,code=compute_100
CUDA_LIB  := $(if $(and $(CUDA_SRCS),$(filter 1,$(CUDA))),$(BUILD)/lib/libsluice_cuda.so)
$(BUILD)/obj/%.cu.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) -std=c++17 -O3 -Xcompiler -fPIC,-Wall,-Werror -I. $(CUDA_ARCH) -MMD -MP -c $< -o $@
$(BUILD)/lib/libsluice_cuda.so: $(patsubst %.cu,$(BUILD)/obj/%.cu.o,$(CUDA_SRCS))
	@mkdir -p $(@D)
	$(NVCC) -shared -o $@ $^ -lcublas -lcublasLt -lcudart

# ---- top-level targets ---------------------------------------------------------
.PHONY: all deps test check check-asan run format clean
.SECONDARY:
.DEFAULT_GOAL := all
all: $(LIBS) $(BINS) $(BENCHES) $(TESTS) $(CUDA_LIB)

deps:
	@deploy/deps.sh --python

# make test = install + build + every test, plain and under ASan/UBSan.
test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory check
	@$(MAKE) --no-print-directory check-asan

check: all
	@tests/run.sh $(BUILD)

check-asan:
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/asan SANITIZE=address,undefined OPT=-O1 CUDA=0 all
	@SLUICE_SANITIZED=1 tests/run.sh $(BUILD)/asan

run: deps
	@$(MAKE) --no-print-directory all
	@deploy/local/run.sh $(BUILD)

format:
	clang-format -i $(shell git ls-files '*.c' '*.h' '*.cu' '*.cuh')

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
