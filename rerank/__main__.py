from rerank.cli import main

if __name__ == "__main__":  # guarded: spawned workers (vLLM's engine core, DataLoader) re-import the main module
    raise SystemExit(main())
