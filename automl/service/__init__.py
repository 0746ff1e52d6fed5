"""automl as a service: the HTTP API (``app``), jobs and their records (``jobs``), the queue
(``queue``), the worker (``worker``), uploads (``uploads``) and warm models (``predictor``).
``automl serve`` and ``automl worker`` start them (``run``)."""
