"""Monitoring: drift of the scored events' model inputs and scores against the champion's reference, live
performance of the predictions whose outcomes arrived, and performance estimated from the scores before they do.

``reference`` builds (once per champion version) what a window is compared with; ``drift`` wraps Evidently;
``performance`` holds the live and estimated metrics; ``trends`` renders the page of every value over time. The
monitor step (``pipelines.steps.monitor``) reads the lake and calls these.
"""
