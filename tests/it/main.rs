mod services;
mod pgwire;
