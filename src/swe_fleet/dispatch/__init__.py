"""The dispatcher: ``council.request`` events become Ray jobs, exactly once, and each job's
status is published once per state; and the producer API that sends requests.
"""
