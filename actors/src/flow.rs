//! One replication flow: starts the source, discovery and destination actors.
use std::sync::Arc;

use actix::prelude::*;

use crate::spec::FlowSpec;
use crate::status::StatusBoard;

/// Supervises one flow.
pub struct FlowSupervisor {
    #[allow(dead_code)]
    spec: FlowSpec,
    #[allow(dead_code)]
    board: Arc<StatusBoard>,
}

impl FlowSupervisor {
    /// Starts the flow in the current actix System.
    pub fn start(spec: FlowSpec, board: Arc<StatusBoard>) -> Addr<Self> {
        Actor::start(Self { spec, board })
    }
}

impl Actor for FlowSupervisor {
    type Context = Context<Self>;
}

/// Stops the flow cleanly: deliver what is in flight, commit, stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopFlow;

impl Handler<StopFlow> for FlowSupervisor {
    type Result = ();
    fn handle(&mut self, _: StopFlow, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
