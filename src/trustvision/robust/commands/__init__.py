"""One module per `trustvision robust` verb: typed config in, run directory out.

    train.py     `robust train`: a standard or adversarially trained base model
    import_model.py  `robust import`: a RobustBench model-zoo checkpoint as a base run
    mix.py       `robust mix`: a fixed mix, its knobs chosen on validation images
    adaptive.py  `robust mix kind=adaptive`: the mixing network, trained and its gate chosen
    eval.py      `robust eval`: AutoAttack, the masking checks and a model card
    certify.py   `robust certify`: certified accuracy against radius
    demo.py      `robust demo` and benchmarks/robust.py: every stage above in one work dir
    report.py    the report of demo.py: a row per model, the paper's goal checked

The maths they call lives beside this package (attacks, mixing, mixtrain, sweep, certify, ...).
"""
