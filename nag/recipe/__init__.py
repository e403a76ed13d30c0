"""Building blocks of supernet training: the LR schedule, child sampling and the sandwich objective."""
