"""ferroloop's benchmarks: ``python -m ferroloop.bench`` runs the same workloads on asyncio's loop,
uvloop and ferroloop side by side and writes a report (see bench/README.md in the repository).

One module per family of workloads (``micro``, ``echo``), each runnable as a child process
(``python -m ferroloop.bench.micro ...``) so that every loop is measured in a fresh interpreter;
``runner`` repeats them, ``stats`` pairs the repetitions and ``report`` writes the results.
"""
