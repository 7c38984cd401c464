"""`denoise-sfu bench fuzz`: seeded, mutated inputs thrown at a live `serve` and `worker`.

One module per job: `system` starts the real processes (loopback only) and reads their
/proc figures and /metrics; `call` runs the live call beside the fuzzing (in a child process,
so the fuzzer's own work never delays its audio); `cases` makes each case reproducible from
(seed, target, index); one module per target family (`sdp`, `json_inputs`, `http_raw`,
`split`, `tokens`, `media`, `worker_frames`); `runner` drives the batches, the checks after
each, and the one JSON line at the end.

Offline: serving code never imports this package.
"""
