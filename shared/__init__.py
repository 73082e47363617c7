"""Code the API and the workers share: settings, schemas, the plan, the job store, storage."""
