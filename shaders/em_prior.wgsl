// Soft-EM M-step with momentum for FiAK priors:
//   pi <- (1 - beta) * pi + beta * target,   logits = log(pi)
// where pi is the softmax of the logits over the visible keys of a row and target is the
// batch-mean attention probability (for a key prior also averaged over the query rows).
//
// Bindings:
//   0  params      uniform Params
//   1  mean_probs  array<f32>   [H, N, N] batch-mean attention probabilities
//   2  logits      array<f32>   theta [H, N, N] (em_entry) or phi [H, N] (em_key), in place
//
// One invocation per row (em_entry) or per head (em_key). Masked entries (j > i when causal)
// keep their logits; a floor of 1e-12 on pi keeps the logarithm finite.

struct Params {
    heads: u32,
    n: u32,
    causal: u32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> mean_probs: array<f32>;
@group(0) @binding(2) var<storage, read_write> logits: array<f32>;

fn visible_end(i: u32) -> u32 {
    if (p.causal != 0u) {
        return i + 1u;
    }
    return p.n;
}

@compute @workgroup_size(64, 1, 1)
fn em_entry(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= p.heads * p.n) {
        return;
    }
    let i = row % p.n;
    let base = row * p.n;
    let end = visible_end(i);

    // pass 1: softmax normaliser of the current logits over the visible keys.
    var max_logit = -3.0e38;
    for (var j = 0u; j < end; j++) {
        max_logit = max(max_logit, logits[base + j]);
    }
    var total = 0.0;
    for (var j = 0u; j < end; j++) {
        total += exp(logits[base + j] - max_logit);
    }

    // pass 2: mix with the target and take the logarithm.
    for (var j = 0u; j < end; j++) {
        let pi = exp(logits[base + j] - max_logit) / total;
        let mixed = (1.0 - p.beta) * pi + p.beta * mean_probs[base + j];
        logits[base + j] = log(max(mixed, 1e-12));
    }
}

@compute @workgroup_size(64, 1, 1)
fn em_key(@builtin(global_invocation_id) gid: vec3<u32>) {
    let head = gid.x;
    if (head >= p.heads) {
        return;
    }
    let base = head * p.n;

    var max_logit = -3.0e38;
    for (var j = 0u; j < p.n; j++) {
        max_logit = max(max_logit, logits[base + j]);
    }
    var total = 0.0;
    for (var j = 0u; j < p.n; j++) {
        total += exp(logits[base + j] - max_logit);
    }

    for (var j = 0u; j < p.n; j++) {
        // Target of key j: its attention probability averaged over the query rows.
        var mean = 0.0;
        for (var i = 0u; i < p.n; i++) {
            mean += mean_probs[(head * p.n + i) * p.n + j];
        }
        mean /= f32(p.n);
        let pi = exp(logits[base + j] - max_logit) / total;
        let mixed = (1.0 - p.beta) * pi + p.beta * mean;
        logits[base + j] = log(max(mixed, 1e-12));
    }
}
