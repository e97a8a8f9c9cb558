# Build of the engine. `make` builds everything buildable here, `make test` builds and runs every
# test that needs no GPU, `make bench` builds ./bench, `make SAN=1 test` runs the tests under
# AddressSanitizer + UndefinedBehaviorSanitizer. Objects go to build/ (build-san/ for SAN=1).

CXX      ?= g++
SAN      ?= 0
NATIVE   ?= 1

ifeq ($(SAN),1)
  BUILD    := build-san
  OPT      := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDSAN    := -fsanitize=address,undefined
else
  BUILD    := build
  OPT      := -O3 -g1
  LDSAN    :=
endif
ifeq ($(NATIVE),1)
  ARCH := -march=native
else
  ARCH := -march=x86-64-v2
endif

CXXFLAGS := -std=c++20 $(OPT) $(ARCH) -fno-math-errno -fno-trapping-math -fopenmp -Wall -Wextra -Wno-unused-parameter -I. -MMD -MP -DENGINE_HAS_CUDA
LDLIBS   := -fopenmp -lopenblas -lz -lpthread $(LDSAN)

LIB_DIRS := engine kernels kernels/cpu kernels/ref kernels/sim autograd models trainer
LIB_SRC  := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.cpp))
# CUDA sources: compiled by g++ against the emulation layer (kernels/sim) for the sim backend,
# and by nvcc for GPUs (`make cuda`).
CU_SRC   := $(wildcard kernels/cuda/*.cu)
LIB_OBJ  := $(LIB_SRC:%.cpp=$(BUILD)/%.o) $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
LIB      := $(BUILD)/libengine.a

TEST_SRC := $(wildcard tests/*.cpp)
TEST_CU  := $(wildcard tests/*.cu)
TEST_OBJ := $(TEST_SRC:%.cpp=$(BUILD)/%.o) $(TEST_CU:%.cu=$(BUILD)/%.cu.o)
TEST_BIN := $(BUILD)/run_tests

# ./train (the SAN build keeps its sanitized one in build-san/).
ifeq ($(SAN),1)
  TRAIN_BIN ?= $(BUILD)/train
else
  TRAIN_BIN ?= train
endif
TRAIN_SRC := apps/train.cpp
TRAIN_OBJ := $(TRAIN_SRC:%.cpp=$(BUILD)/%.o)

BENCH_SRC := $(wildcard tests/bench/*.cpp)
BENCH_OBJ := $(BENCH_SRC:%.cpp=$(BUILD)/%.o)

.PHONY: all test setup clean cuda ptxas-report check-nvcc
all: setup $(TEST_BIN) bench $(TRAIN_BIN)

setup:
	@bash scripts/setup.sh

$(BUILD)/%.o: %.cpp | setup
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/%.cu.o: %.cu | setup
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -DENGINE_SIM -x c++ -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# Binaries link the objects, not the archive, so that self-registering translation units (the
# CUDA/sim backend's device hooks) are always included.
$(TEST_BIN): $(TEST_OBJ) $(LIB_OBJ)
	$(CXX) $(TEST_OBJ) $(LIB_OBJ) $(LDLIBS) -o $@

# `make bench` builds the file ./bench (make treats ./bench and bench as the same target).
bench: $(BENCH_OBJ) $(LIB_OBJ)
	$(CXX) $(BENCH_OBJ) $(LIB_OBJ) $(LDLIBS) -o $@

# `make train` builds ./train.
$(TRAIN_BIN): $(TRAIN_OBJ) $(LIB_OBJ)
	$(CXX) $(TRAIN_OBJ) $(LIB_OBJ) $(LDLIBS) -lboost_program_options -o $@

# Tests run with 2 OpenMP threads (the target machine) unless the caller says otherwise.
# The tests run ./train end to end (tests/test_train_cli.cpp); the SAN build runs its own
# sanitized ./train but leaves out the two learning-quality runs (minutes under ASan; the normal
# build checks them) and says so.
ifeq ($(SAN),1)
  TEST_EXCLUDE := -tce='train/learn*'
endif
test: setup $(TEST_BIN) $(TRAIN_BIN)
	@if [ -n "$(TEST_EXCLUDE)" ]; then echo "note: SAN build leaves out the test cases train/learn* (run in the normal build)"; fi
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} OPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-2} \
	  ASAN_OPTIONS=detect_leaks=1 TRAIN_BIN=./$(TRAIN_BIN) ./$(TEST_BIN) $(TEST_EXCLUDE) $(TEST_ARGS)

# --- the real CUDA backend (nvcc, sm_80 + sm_90) -----------------------------------------------
# The .cu files are compiled by nvcc; the C++ objects are those of the normal build minus the
# sim runtime and the sim-compiled .cu objects. ptxas's per-kernel report is kept beside each
# object for `make ptxas-report`.
NVCC       ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCH  := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
NVCCFLAGS  := -std=c++20 -O3 $(CUDA_ARCH) -Xptxas -v -I. -DENGINE_NVTX -DENGINE_HAS_CUDA -Xcompiler -fopenmp,-fno-math-errno
CUDA_BUILD := build-cuda
CUDA_OBJ   := $(CU_SRC:%.cu=$(CUDA_BUILD)/%.o)
HOST_OBJ   := $(filter-out $(BUILD)/kernels/sim/% %.cu.o,$(LIB_OBJ))
CUDA_LIBS  := -L$(CUDA_HOME)/lib64 -lcudnn -lcublas -lcudart -Wl,-rpath,$(CUDA_HOME)/lib64

check-nvcc:
	@test -n "$(NVCC)" || { echo "make cuda: nvcc not found (install the CUDA toolkit or put nvcc on PATH); the CPU build does not need it" >&2; exit 1; }

$(CUDA_BUILD)/%.o: %.cu | check-nvcc
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -x cu -c $< -o $@ 2> $@.ptxas || { cat $@.ptxas >&2; exit 1; }
	@grep -v -E 'ptxas info|^$$' $@.ptxas >&2 || true

cuda: check-nvcc $(CUDA_BUILD)/bench $(CUDA_BUILD)/train

$(CUDA_BUILD)/bench: $(BENCH_OBJ) $(HOST_OBJ) $(CUDA_OBJ)
	$(CXX) $^ $(LDLIBS) $(CUDA_LIBS) -o $@

# ./train on the GPU backend (--device cuda): the CPU ./train's objects with the nvcc kernels.
$(CUDA_BUILD)/train: $(TRAIN_OBJ) $(HOST_OBJ) $(CUDA_OBJ)
	$(CXX) $^ $(LDLIBS) $(CUDA_LIBS) -lboost_program_options -o $@

ptxas-report: $(CUDA_OBJ)
	@python3 scripts/ptxas_report.py $(CUDA_OBJ:.o=.o.ptxas)

clean:
	rm -rf build build-san build-cuda ./bench ./train

-include $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(BENCH_OBJ:.o=.d) $(TRAIN_OBJ:.o=.d)
