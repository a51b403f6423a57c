//! Counted slots per tenant, capped, each freed when dropped: how many Watch streams a tenant
//! has open, how many plans and uploads it has admitted to the CPU pool. A tenant holding no slot
//! has no entry, so the table stays as small as the tenants active now.

use crate::store::TenantId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Counted slots per tenant, capped.
#[derive(Debug)]
pub struct TenantSlots {
    cap: usize,
    open: Mutex<HashMap<TenantId, usize>>,
}

/// One taken slot; dropping it frees the slot.
#[derive(Debug)]
pub struct TenantSlot {
    slots: Arc<TenantSlots>,
    tenant: TenantId,
}

impl TenantSlots {
    /// At most `cap` slots per tenant.
    pub fn new(cap: usize) -> Arc<TenantSlots> {
        Arc::new(TenantSlots { cap, open: Mutex::new(HashMap::new()) })
    }

    /// The cap per tenant.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Takes a slot for `tenant`, or `None` when it holds `cap` already.
    pub fn try_open(self: &Arc<Self>, tenant: &TenantId) -> Option<TenantSlot> {
        let mut open = self.lock();
        let n = open.entry(tenant.clone()).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(TenantSlot { slots: self.clone(), tenant: tenant.clone() })
    }

    /// Slots `tenant` holds now.
    pub fn open_for(&self, tenant: &TenantId) -> usize {
        self.lock().get(tenant).copied().unwrap_or(0)
    }

    /// Slots held now, all tenants together.
    pub fn open_total(&self) -> usize {
        self.lock().values().sum()
    }

    /// The counts hold no invariant a panic could break halfway: the poison flag is ignored.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(n) = open.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_tenant_and_freed_on_drop() {
        let slots = TenantSlots::new(2);
        let (a, b) = (TenantId::parse("alice").unwrap(), TenantId::parse("bob").unwrap());
        let a1 = slots.try_open(&a).unwrap();
        let a2 = slots.try_open(&a).unwrap();
        assert!(slots.try_open(&a).is_none());
        let b1 = slots.try_open(&b).unwrap();
        assert_eq!((slots.open_for(&a), slots.open_for(&b), slots.open_total()), (2, 1, 3));
        drop(a1);
        let a3 = slots.try_open(&a).unwrap();
        drop((a2, a3, b1));
        assert_eq!(slots.open_total(), 0);
        assert!(slots.lock().is_empty(), "no entry is kept for a tenant with no slot");
    }
}
