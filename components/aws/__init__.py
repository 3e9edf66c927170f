"""Tools a user runs from a laptop against AWS (not part of the image): endpoint deployment
(``deploy``) and a local SageMaker-compatible front for one container (``local_front``)."""
