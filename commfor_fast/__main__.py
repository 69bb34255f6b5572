"""`python -m commfor_fast ...` (also what torchrun runs: `torchrun ... -m commfor_fast train ...`)."""

from commfor_fast.cli import main

if __name__ == "__main__":
    main()
