"""Run by tests/training/test_sharding.py in a fresh process, since the number of simulated CPU
devices is fixed when JAX starts: train tiny models on given meshes, one after another in this
process, and print each one's losses as a JSON line."""

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

    results = {}
    for name, run in args["runs"].items():
        cfg = config.load(None, run["overrides"])
        out = loop.train_run(
            cfg, run["run_dir"], progress=False, stop_after=run.get("stop_after"),
            print_fn=lambda *_: None,
        )  # fmt: skip
        if jax.process_index() == 0:
            lines = [json.loads(x) for x in open(f"{run['run_dir']}/metrics.jsonl")]
            results[name] = {
                "train": [r["train_loss"] for r in lines if "train_loss" in r],
                "val": [r["val_loss"] for r in lines if "val_loss" in r],
                "devices": jax.device_count(),
                "step": out["step"],
            }
    if jax.process_index() == 0:
        print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
