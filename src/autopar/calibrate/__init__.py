"""Measure this machine as a cluster (`autopar calibrate`): compute, memory, collectives."""
