"""The SageMaker AI container: a WebSocket bridge on :8080 in front of a Realtime engine on :8081.

``container/serve`` is the image's entrypoint (see :mod:`container.entrypoint`);
:mod:`container.bridge` answers SageMaker's ``/ping`` and relays each bidirectional stream to
the engine's ``/v1/realtime``, frame by frame.
"""
