"""What ``app.py`` wires into the page: sessions and their manager, the microphone link and
widget, follower views, the page settings and the browser assets (``web/``)."""
