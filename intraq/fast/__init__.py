"""The fast path of stages 1 and 2 (issue 12): same algorithm as the reference, several runs stepped together,
no host synchronisation per step, the step optionally captured once (CUDA graph or torch.compile).

`settings` (numeric settings recorded with every result), `schedule` (the reference's random draws, hoisted
into per-epoch / per-batch device tensors), `sgd` / `adam` (functional optimizers with per-run lr),
`finetune` (stage 2), `synthesis` (stage 1), `capture` (eager / torch.compile / CUDA graph).
"""
