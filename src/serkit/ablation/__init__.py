"""``serkit ablate``: a recipe's ablation rows and paper-shaped tables, all as data in ``configs/ablations/``.

:mod:`serkit.ablation.spec` reads a rows file (named rows, named tables: lists of rows or grids of named axes),
:mod:`serkit.ablation.tables` writes a table (markdown, CSV, PNG) from the row runs' results,
:mod:`serkit.ablation.run` runs the rows (one resumable ``run_cv`` each) and holds the command,
:mod:`serkit.ablation.tsne` draws t-SNE plots of a row's test embeddings.
"""
