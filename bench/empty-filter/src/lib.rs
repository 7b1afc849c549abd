//! The empty proxy-wasm filter: a root context that creates an HTTP context per request, and
//! an HTTP context that lets every request through untouched.
//!
//! It is the `make bench` row that prices "being a wasm filter at all" (the VM call per
//! request, context creation and teardown) with the same SDK (`proxy-wasm`), the same release
//! profile (`wasm-release`: LTO, one codegen unit, `panic = "abort"`) and the same runtime (V8)
//! as `weauth-filter`. weauth's own cost is reported as a multiple of this one's.

#[cfg(target_arch = "wasm32")]
mod glue {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};

    pub struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Pass))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    pub struct Pass;

    impl Context for Pass {}

    impl HttpContext for Pass {
        fn on_http_request_headers(&mut self, _num_headers: usize, _eos: bool) -> Action {
            Action::Continue
        }
    }
}

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(glue::Root)
    });
}}
