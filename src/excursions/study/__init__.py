"""The study: the paper's experiments as units of work, run and resumed one by one, every number in one SQLite
file, and a report whose figures mirror the paper's.

    plan.py         what a unit is, the directory its settings name, what it waits for; the backbone of units
    units.py        how each kind of unit runs, when it is done, what it puts in the store
    store.py        study.db: the schema and every query
    runner.py       plan(), the lock, run_study(), status and export
    executors.py    where units run: here (local) or as Ray tasks
    results.py      the numbers with their intervals, and the verdict rule
    report.py       sections rendered as Markdown and self-contained HTML; the plot helpers
    experiments/    one file per experiment: the units it adds and its section
    calibrate.py    is a testbed fit for the study? (pretrain, evaluate, RL over seeds, the targets)

Entry points: `excursions study`, `excursions status`, `excursions export`, `excursions calibrate`.
"""
