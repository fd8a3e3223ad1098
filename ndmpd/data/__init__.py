"""The DATA service's parts: environment, destinations, file history, image reads, jobs."""
