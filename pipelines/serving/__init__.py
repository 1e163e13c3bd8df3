"""The REST scoring service of a use case's champion (``mlops serve``).

A request carries raw records (the columns of the use case's primary source, known at prediction time); their
features come from the online feature snapshot through :func:`pipelines.features.online.model_input_frame`, the function
batch scoring uses, so a record scored over HTTP and by the batch scorer at the same time gets the same features
and, from the same model, the same probability.

- :mod:`.schema`: request validation from the use case config (types, required, ranges, allowed values);
- :mod:`.models`: the served versions (``champion``, optionally ``challenger``), verified before they serve
  (the artifact digest recorded at registration, a smoke prediction on the model's stored input example) and
  swapped in when an alias moves;
- :mod:`.snapshots`: the online snapshot a request at time ``at`` uses;
- :mod:`.capture`: requests, features, predictions and versions appended to ``captures/<usecase>`` off the
  request path;
- :mod:`.service`: scoring, canary and shadow routing; :mod:`.app`: the HTTP API (FastAPI);
  :mod:`.server`: the command (uvicorn, one process per worker).
"""
