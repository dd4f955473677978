#pragma once
// The routing path's ops, each in its own header with its reference and its limits:
// kernels/<op>.h declares it, kernels/<op>.cpp chooses between the CUDA kernel
// (kernels/<op>.cu, with its autograd there) and the reference (kernels/<op>_ref.cpp).
#include "kernels/balancing_loss.h"
#include "kernels/column_topk.h"
#include "kernels/counting_sort.h"
#include "kernels/device.h"
#include "kernels/expert_bias_act.h"
#include "kernels/expert_ffn.h"
#include "kernels/kept_gates.h"
#include "kernels/permute.h"
#include "kernels/sinkhorn.h"
#include "kernels/topk_gate.h"
