"""``cpl sweep``: a grid of ordinary runs (:mod:`.grid`), run by an executor (:mod:`.runner` locally, :mod:`.on_ray`
on a Ray cluster), and its results table (:mod:`.tables`)."""
