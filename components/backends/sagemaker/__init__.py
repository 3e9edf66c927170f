"""A SageMaker AI endpoint reached through its HTTP/2 bidirectional stream: the client
(``client``), the signed HTTP/2 transport (``transport``) and AWS errors as sentences
(``errors``)."""
