"""One router per resource: validate, call api.services, map the result to a response."""
