using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Shared.Serialization;

/// <summary>
/// The one table of wire names: every message that crosses the cluster or goes into the journal has a
/// fixed manifest here. The manifest, not the CLR type name, is what is stored, so a class may be renamed
/// or moved without breaking the replay of old journals.
/// </summary>
/// <remarks>
/// To add a message: add one line below (<c>lm.&lt;Name&gt;.v1</c>) and a sample in the tests' factory.
/// To change a message: new fields go last as optional constructor parameters with a default (old payloads
/// still read, same manifest). A change old payloads cannot satisfy (a rename, a removed or retyped field)
/// needs a new type or manifest (<c>.v2</c>) while the old manifest keeps a reader, so journals still replay.
/// A manifest, once written to a journal, is never reused for another shape.
/// </remarks>
public static class ProtocolManifests
{
    private static readonly (string Manifest, Type Type)[] Table =
    [
        // saga → hosts, and their answers
        ("lm.ExecuteStep.v1", typeof(ExecuteStep)),
        ("lm.SetStepSpeed.v1", typeof(SetStepSpeed)),
        ("lm.StopStep.v1", typeof(StopStep)),
        ("lm.OperationSucceeded.v1", typeof(OperationSucceeded)),
        ("lm.OperationFailed.v1", typeof(OperationFailed)),
        ("lm.OperationProgress.v1", typeof(OperationProgress)),

        // commands to a migration saga
        ("lm.StartMigration.v1", typeof(StartMigration)),
        ("lm.AdmitMigration.v1", typeof(AdmitMigration)),
        ("lm.ReportStepSucceeded.v1", typeof(ReportStepSucceeded)),
        ("lm.ReportStepFailed.v1", typeof(ReportStepFailed)),
        ("lm.ReportProgress.v1", typeof(ReportProgress)),
        ("lm.RetryDue.v1", typeof(RetryDue)),
        ("lm.CancelMigration.v1", typeof(CancelMigration)),
        ("lm.ResumeMigration.v1", typeof(ResumeMigration)),
        ("lm.AbandonMigration.v1", typeof(AbandonMigration)),
        ("lm.ReportVmStopped.v1", typeof(ReportVmStopped)),

        // questions to a migration saga, its answers and the status changes it publishes (topic "migrations")
        ("lm.GetMigrationState.v1", typeof(GetMigrationState)),
        ("lm.MigrationCommandAccepted.v1", typeof(MigrationCommandAccepted)),
        ("lm.MigrationCommandRefused.v1", typeof(MigrationCommandRefused)),
        ("lm.MigrationStateReply.v1", typeof(MigrationStateReply)),
        ("lm.MigrationStatusChanged.v1", typeof(MigrationStatusChanged)),

        // sagas ↔ the admission limits singleton
        ("lm.AdmissionRequest.v1", typeof(AdmissionRequest)),
        ("lm.AdmissionHeld.v1", typeof(AdmissionHeld)),
        ("lm.AdmissionReleased.v1", typeof(AdmissionReleased)),
        ("lm.AdmissionRestarted.v1", typeof(AdmissionRestarted)),
        ("lm.AdmissionCheck.v1", typeof(AdmissionCheck)),

        // journal events of a migration saga
        ("lm.MigrationRequested.v1", typeof(MigrationRequested)),
        ("lm.MigrationAdmitted.v1", typeof(MigrationAdmitted)),
        ("lm.StepStarted.v1", typeof(StepStarted)),
        ("lm.StepCompleted.v1", typeof(StepCompleted)),
        ("lm.StepFailed.v1", typeof(StepFailed)),
        ("lm.RetryScheduled.v1", typeof(RetryScheduled)),
        ("lm.PointOfNoReturnPassed.v1", typeof(PointOfNoReturnPassed)),
        ("lm.RollbackStarted.v1", typeof(RollbackStarted)),
        ("lm.ProgressReported.v1", typeof(ProgressReported)),
        ("lm.DiskFinished.v1", typeof(DiskFinished)),
        ("lm.MigrationSuspended.v1", typeof(MigrationSuspended)),
        ("lm.MigrationResumed.v1", typeof(MigrationResumed)),
        ("lm.MigrationCompleted.v1", typeof(MigrationCompleted)),
        ("lm.MigrationFailed.v1", typeof(MigrationFailed)),
        ("lm.MigrationCancelled.v1", typeof(MigrationCancelled)),
        ("lm.MigrationAbandoned.v1", typeof(MigrationAbandoned)),
        ("lm.AbandonStarted.v1", typeof(AbandonStarted)),

        // membership: a restarting node's crashed incarnation, downed by a running member before the node joins
        ("lm.DownPredecessor.v1", typeof(DownPredecessor)),
        ("lm.PredecessorGone.v1", typeof(PredecessorGone)),

        // the inventory: host and SPM reports, the Coordinator's questions and their answers
        ("lm.HostStatusReport.v1", typeof(HostStatusReport)),
        ("lm.DomainStatusReport.v1", typeof(DomainStatusReport)),
        ("lm.ForgetHost.v1", typeof(ForgetHost)),
        ("lm.HostForgetAnswer.v1", typeof(HostForgetAnswer)),
        ("lm.ReportAcknowledged.v1", typeof(ReportAcknowledged)),
        ("lm.GetValidationFacts.v1", typeof(GetValidationFacts)),
        ("lm.ValidationFactsReply.v1", typeof(ValidationFactsReply)),
        ("lm.LocateVm.v1", typeof(LocateVm)),
        ("lm.VmLocation.v1", typeof(VmLocation)),
        ("lm.ReserveDisks.v1", typeof(ReserveDisks)),
        ("lm.DisksReserved.v1", typeof(DisksReserved)),
        ("lm.DisksBusy.v1", typeof(DisksBusy)),
        ("lm.DisksNotReserved.v1", typeof(DisksNotReserved)),
        ("lm.ReleaseDisks.v1", typeof(ReleaseDisks)),
        ("lm.DisksReleased.v1", typeof(DisksReleased)),
        ("lm.GetInventory.v1", typeof(GetInventory)),
        // also the inventory's snapshot in the snapshot store
        ("lm.InventorySnapshot.v1", typeof(InventorySnapshot)),

        // journal events of the inventory
        ("lm.HostReported.v1", typeof(HostReported)),
        ("lm.HostVmsChanged.v1", typeof(HostVmsChanged)),
        ("lm.DomainsReported.v1", typeof(DomainsReported)),
        ("lm.HostForgotten.v1", typeof(HostForgotten)),
        ("lm.DisksReservedForMigration.v1", typeof(DisksReservedForMigration)),
        ("lm.DisksReleasedByMigration.v1", typeof(DisksReleasedByMigration)),

        // the operator's speed change of a running migration: its command and its journal event
        ("lm.SetMigrationSpeed.v1", typeof(SetMigrationSpeed)),
        ("lm.MigrationSpeedChanged.v1", typeof(MigrationSpeedChanged)),

        // management: the SPM's storage changes, domains attached by every host, VM work on its host
        ("lm.ManagementRefused.v1", typeof(ManagementRefused)),
        ("lm.CreateDomain.v1", typeof(CreateDomain)),
        ("lm.DomainCreated.v1", typeof(DomainCreated)),
        ("lm.CreateVmDisks.v1", typeof(CreateVmDisks)),
        ("lm.VmDisksCreated.v1", typeof(VmDisksCreated)),
        ("lm.DeleteVmDisks.v1", typeof(DeleteVmDisks)),
        ("lm.VmDisksDeleted.v1", typeof(VmDisksDeleted)),
        ("lm.CreateSnapshotVolumes.v1", typeof(CreateSnapshotVolumes)),
        ("lm.SnapshotVolumesCreated.v1", typeof(SnapshotVolumesCreated)),
        ("lm.GetSpmLocation.v1", typeof(GetSpmLocation)),
        ("lm.SpmLocation.v1", typeof(SpmLocation)),
        ("lm.AttachDomain.v1", typeof(AttachDomain)),
        ("lm.CreateVm.v1", typeof(CreateVm)),
        ("lm.StartVm.v1", typeof(StartVm)),
        ("lm.StopVm.v1", typeof(StopVm)),
        ("lm.SnapshotVm.v1", typeof(SnapshotVm)),
        ("lm.GetManagedVm.v1", typeof(GetManagedVm)),
        ("lm.ManagedVm.v1", typeof(ManagedVm)),
        ("lm.StartGuestIo.v1", typeof(StartGuestIo)),
        ("lm.GetGuestIo.v1", typeof(GetGuestIo)),
        ("lm.GuestIoStatus.v1", typeof(GuestIoStatus)),
        ("lm.VerifyGuest.v1", typeof(VerifyGuest)),
        ("lm.GuestVerified.v1", typeof(GuestVerified)),

        // the API's audit trail: its commands, answers and journal events
        ("lm.RecordAuditRequest.v1", typeof(RecordAuditRequest)),
        ("lm.RecordAuditOutcome.v1", typeof(RecordAuditOutcome)),
        ("lm.AuditRecorded.v1", typeof(AuditRecorded)),
        ("lm.GetAuditEntries.v1", typeof(GetAuditEntries)),
        ("lm.AuditEntries.v1", typeof(AuditEntries)),
        // also the trail's snapshot in the snapshot store
        ("lm.AuditSnapshot.v1", typeof(AuditSnapshot)),
        ("lm.AuditRequestRecorded.v1", typeof(AuditRequestRecorded)),
        ("lm.AuditOutcomeRecorded.v1", typeof(AuditOutcomeRecorded)),
    ];

    private static readonly Dictionary<Type, string> ManifestByType = BuildIndex(t => t.Type, t => t.Manifest, "type");
    private static readonly Dictionary<string, Type> TypeByManifest = BuildIndex(t => t.Manifest, t => t.Type, "manifest");

    /// <summary>Every registered type with its manifest, in table order.</summary>
    public static IReadOnlyList<(string Manifest, Type Type)> All => Table;

    public static bool TryGetManifest(Type type, out string manifest) =>
        ManifestByType.TryGetValue(type, out manifest!);

    public static bool TryGetType(string manifest, out Type type) =>
        TypeByManifest.TryGetValue(manifest, out type!);

    private static Dictionary<TKey, TValue> BuildIndex<TKey, TValue>(
        Func<(string Manifest, Type Type), TKey> key, Func<(string Manifest, Type Type), TValue> value, string what)
        where TKey : notnull
    {
        var index = new Dictionary<TKey, TValue>();
        foreach (var entry in Table)
        {
            // a duplicate would make one of two messages unreadable: refuse to start rather than lose data
            if (!index.TryAdd(key(entry), value(entry)))
                throw new InvalidOperationException($"the protocol manifest table lists the {what} '{key(entry)}' twice");
        }
        return index;
    }
}
