"""Run by tests/training/test_sharding.py in a fresh process, since the number of simulated CPU
devices is fixed when JAX starts: train a tiny model on a given mesh and print its losses as one
JSON line."""

import json
import sys

import chex


def main() -> None:
    args = json.loads(sys.argv[1])
    chex.set_n_cpu_devices(args["devices"])  # before anything starts a jax backend
    import jax

    if args.get("coordinator"):
        jax.distributed.initialize(
            args["coordinator"], num_processes=args["num_processes"], process_id=args["process_id"]
        )
    from lm import config
    from lm.training import loop

    cfg = config.load(None, args["overrides"])
    out = loop.train_run(
        cfg, args["run_dir"], progress=False, stop_after=args.get("stop_after"),
        print_fn=lambda *_: None,
    )  # fmt: skip
    if jax.process_index() == 0:
        lines = [json.loads(x) for x in open(f"{args['run_dir']}/metrics.jsonl")]
        print(
            "RESULT "
            + json.dumps(
                {
                    "train": [r["train_loss"] for r in lines if "train_loss" in r],
                    "val": [r["val_loss"] for r in lines if "val_loss" in r],
                    "devices": jax.device_count(),
                    "step": out["step"],
                }
            )
        )


if __name__ == "__main__":
    main()
