using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Shared.Tests.Serialization;

/// <summary>
/// One fixed sample of every registered message, with every field set to a value that is not its default
/// (and nullable fields filled), so a round trip that dropped or mangled any field shows. The values are
/// constants because the golden files are made from them.
/// </summary>
public static class ProtocolSamples
{
    private static readonly MigrationId Migration = MigrationId.Parse("6d1f4a52-0b8e-4c1e-9a57-3f0c2b9e7a11");
    private static readonly VmId Vm = VmId.Parse("b3a9e1c4-5d2f-4e8a-8c6b-1f7d9e0a2b33");
    private static readonly VmId OtherVm = VmId.Parse("c4b0f2d5-6e3a-4f9b-9d7c-2a8e0f1b3c44");
    private static readonly ImageId Image = ImageId.Parse("0c5e8f21-7a4b-4d93-b1e6-9a2c3d4e5f60");
    private static readonly ImageId OtherImage = ImageId.Parse("1e2d3c4b-5a69-4788-96a5-b4c3d2e1f0a9");
    private static readonly DomainId Source = DomainId.Parse("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d");
    private static readonly DomainId Destination = DomainId.Parse("f0e1d2c3-b4a5-4968-8776-655443322110");
    private static readonly VolumeId NewLeaf = VolumeId.Parse("9f8e7d6c-5b4a-4392-8190-7f6e5d4c3b2a");
    // a non-UTC offset and sub-second ticks: the round trip must keep both
    private static readonly DateTimeOffset At = new(2025, 3, 14, 15, 9, 26, 535, TimeSpan.FromHours(2));

    private static readonly OperationId Operation = new(Migration, MigrationStep.StartReplication, Image, 3);
    private static readonly StepOutcome Outcome = new(BytesCopied: 1_073_741_824, Detail: "mirror ready after 2 passes");
    private static readonly DiskPlan Plan = new(Image, Source, Destination, SizeBytes: 4_294_967_296, NewLeaf);

    private static readonly MigrationRequest Request = new(
        Vm,
        [new DiskMoveRequest(Image, Destination), new DiskMoveRequest(OtherImage, Destination)],
        MigrationStrategy.PostCopy,
        BandwidthBytesPerSecond: 50_000_000,
        CopyMode.WriteBlocking,
        MaxParallelDisks: 2,
        DeleteSource: false,
        Retry: new RetryPolicy(7, TimeSpan.FromMilliseconds(1500), TimeSpan.FromMinutes(2)));

    private static readonly ValidationFacts Facts = new(
        new VmFacts(Vm, Running: true, [new DiskFacts(Image, Source, 4_294_967_296), new DiskFacts(OtherImage, Source, 1_048_576, OtherDomains: [Destination])]),
        [new DomainFacts(Source, Active: true, 10_000_000_000), new DomainFacts(Destination, Active: false, 20_000_000_000, ["host-2"], "domain-b")],
        [ImageId.Parse("2a3b4c5d-6e7f-4809-9a1b-2c3d4e5f6a7b")]);

    private static readonly MigrationId OtherMigration = MigrationId.Parse("7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f");
    private static readonly VolumeId BaseVolume = VolumeId.Parse("3b4c5d6e-7f80-4192-a3b4-c5d6e7f80912");
    private static readonly VolumeId LeafVolume = VolumeId.Parse("4c5d6e7f-8091-42a3-b4c5-d6e7f8091a2b");

    private static readonly VmReport VmSeen = new(Vm, "web-01 (élan)", Running: true,
    [
        new DriveReport(Image, [new VolumeRef(Source, BaseVolume), new VolumeRef(Destination, LeafVolume)], 8_589_934_592, 4_294_967_296),
        new DriveReport(OtherImage, [new VolumeRef(Source, BaseVolume)], 2_147_483_648, 1_048_576, VolumeFormat.Cow, VolumeAllocation.Preallocated),
    ]);

    private static readonly DomainReport SourceDomain = new(Source, "fast-ssd", "file", 100_000_000_000, 90_000_000_000, 10_000_000_000, Active: true);
    private static readonly DomainReport DestinationDomain = new(Destination, "slow-hdd", "sim", 200_000_000_000, 180_000_000_000, 20_000_000_000, Active: false);

    private static readonly MigrationView View = new(
        Migration, Vm, "suspended at Pivot of disk 0c5e8f21", Finished: true, MigrationStrategy.PostCopy,
        [
            new DiskView(Image, Source, Destination, "Suspended", MigrationStep.Pivot, Attempt: 5, Done: 3_000, Total: 4_000,
                Remaining: TimeSpan.FromSeconds(90.25), LastError: "QMP_ERROR: job not ready",
                [new StepTimingView(MigrationStep.CloneImageStructure, 1, At, At.AddSeconds(2), "completed"),
                 new StepTimingView(MigrationStep.Pivot, 5, At.AddSeconds(3), null, null)]),
            new DiskView(OtherImage, Source, Destination, "Pending", null, 0, 0, 0, null, null, []),
        ],
        new MigrationError(MigrationErrorCodes.Suspended, "Pivot of disk 0c5e8f21 failed (QMP_ERROR: job not ready) after 5 attempts"),
        RequestedAt: At.AddMinutes(-5), UpdatedAt: At, FinishedAt: At.AddSeconds(1),
        Limits: new CopyLimits(25_000_000, CopyMode.WriteBlocking, MaxParallelDisks: 2));

    private static readonly Dictionary<Type, object[]> ByType = Index(
        // host protocol
        new ExecuteStep(Operation, Vm, Plan, MigrationStrategy.PostCopy, SpeedBytesPerSecond: 25_000_000, CopyMode.WriteBlocking),
        new ExecuteStep(Operation, Vm, Plan with { MakesWhole = true }, MigrationStrategy.PostCopy, SpeedBytesPerSecond: 0, CopyMode.Background),
        new SetStepSpeed(Operation, 12_500_000),
        new StopStep(Operation, "migration cancelled by an operator"),
        new OperationSucceeded(Operation, Outcome),
        new OperationSucceeded(Operation, new StepOutcome()),
        new OperationFailed(Operation, ErrorCodes.VmNotRunning, "VM b3a9e1c4 is gone (QEMU pid 4242 exited)", Transient: true),
        new OperationProgress(Operation, Done: 536_870_912, Total: 4_294_967_296),
        // migration commands
        new StartMigration(Migration, Request, Facts),
        new StartMigration(Migration, Request with { Retry = null }, new ValidationFacts(null, [], [])),
        new AdmitMigration(Migration),
        new ReportStepSucceeded(Migration, Operation, Outcome),
        new ReportStepFailed(Migration, Operation, ErrorCodes.NotEnoughSpace, "destination has 1 MiB free, needs 4 GiB", Transient: false),
        new ReportProgress(Migration, Operation, Done: 1_024, Total: 2_048),
        new RetryDue(Migration),
        new CancelMigration(Migration, "operator asked at 15:09"),
        new ResumeMigration(Migration),
        new AbandonMigration(Migration),
        new ReportVmStopped(Migration, Vm, "host-2"),
        new SetMigrationSpeed(Migration, 50_000_000),
        // migration events (the journal)
        new MigrationRequested(Migration, Request, [Plan, Plan with { Image = OtherImage, SizeBytes = 1_048_576 }], At),
        new MigrationAdmitted(Migration, At),
        new StepStarted(Migration, Image, MigrationStep.CloneImageStructure, Operation, Attempt: 3, At),
        new StepCompleted(Migration, Image, MigrationStep.SyncInternalVolumes, Operation, Outcome, At),
        new StepFailed(Migration, Image, MigrationStep.Pivot, Operation, ErrorCodes.QmpError, "GenericError: job not ready", Transient: true, At),
        new RetryScheduled(Migration, Image, MigrationStep.Pivot, NextAttempt: 4, TimeSpan.FromSeconds(1.5), At.AddSeconds(1.5), At),
        new PointOfNoReturnPassed(Migration, Image, At),
        new RollbackStarted(Migration, TerminationKind.Failure, ErrorCodes.VerifyFailed, "layer 2 differs at offset 65536", At),
        new ProgressReported(Migration, Image, MigrationStep.WaitMirrorReady, Done: 3_000, Total: 4_000, At),
        new DiskFinished(Migration, Image, DiskOutcome.RolledBack, At),
        new MigrationSuspended(Migration, Image, MigrationStep.DeleteSourceImage, "retries exhausted after 5 attempts", At),
        new MigrationResumed(Migration, At),
        new MigrationCompleted(Migration, At),
        new MigrationFailed(Migration, MigrationErrorCodes.RetriesExhausted, "step Pivot failed 5 times", At),
        new MigrationCancelled(Migration, "cancelled by an operator", At),
        new MigrationAbandoned(Migration, At),
        new MigrationAbandoned(Migration, At, [new LeftBehind(Image, Destination, "the copy of disk 0c5e8f21 this migration made", "remove the image folder")]),
        new AbandonStarted(Migration, "abandoned by an operator while suspended at DeleteDestinationImage of disk 0c5e8f21", At),
        new MigrationSpeedChanged(Migration, 0, At),
        // migration queries, answers and status changes
        new GetMigrationState(Migration),
        new MigrationCommandAccepted(Migration, nameof(CancelMigration), "rolling back (CANCELLED)"),
        new MigrationCommandRefused(Migration, MigrationErrorCodes.PointOfNoReturnPassed, "migration 6d1f4a52 cannot be cancelled: disk 0c5e8f21 passed its point of no return (Pivot)"),
        new MigrationStateReply(View, LastSequenceNr: 42),
        new MigrationStateReply(new MigrationView(Migration, null, "new", false, null, [], null, null, null, null), LastSequenceNr: 0),
        new MigrationStatusChanged(Migration, "suspended at Pivot of disk 0c5e8f21",
            [new DiskProgress(Image, "InFlight", MigrationStep.WaitMirrorReady, 3_000, 4_000, TimeSpan.FromSeconds(12.5)),
             new DiskProgress(OtherImage, "Pending", null, 0, 0, null)],
            At, Finished: true),
        // admission limits
        new AdmissionRequest(Migration, "host-1", [SourceDomain.Id, DestinationDomain.Id]),
        new AdmissionRequest(Migration, null, []),
        new AdmissionHeld(Migration, "host-2", [DestinationDomain.Id]),
        new AdmissionReleased(Migration),
        new AdmissionRestarted(At),
        new AdmissionCheck(Migration),
        // membership
        new DownPredecessor("akka.tcp://lsm@10.0.0.11:4053"),
        new PredecessorGone("akka.tcp://lsm@10.0.0.11:4053"),
        // inventory messages
        new HostStatusReport("host-1", "akka.tcp://lsm@10.0.0.11:4053", SpmCapable: true, [VmSeen, VmSeen with { Running = false, Drives = [] }], At),
        new HostStatusReport("host-1", "akka.tcp://lsm@10.0.0.11:4053", SpmCapable: true, [VmSeen], At, Epoch: At.UtcTicks, Seq: 7,
            Whole: false, WholeEnds: false, Gone: [OtherVm]),
        new DomainStatusReport([SourceDomain, DestinationDomain], At),
        new DomainStatusReport([SourceDomain], At, HostId: "host-2"),
        new ReportAcknowledged(ReportAcknowledged.HostReport, At),
        new ReportAcknowledged(ReportAcknowledged.HostReport, At, Epoch: At.UtcTicks, Seq: 7),
        new ReportAcknowledged(ReportAcknowledged.HostReport, At, Epoch: At.UtcTicks, Seq: 3, Resync: true),
        new ReportAcknowledged(ReportAcknowledged.DomainsReport, At),
        new GetValidationFacts(Vm, [Image, OtherImage]),
        new ValidationFactsReply(Facts),
        new ValidationFactsReply(new ValidationFacts(null, [], [])),
        new LocateVm(Vm),
        new VmLocation(Vm, "host-2"),
        new VmLocation(Vm, null),
        new ReserveDisks(Migration, Vm, [Image, OtherImage]),
        new DisksReserved(Migration),
        new DisksBusy(Migration, Image, OtherMigration),
        new DisksNotReserved(Migration, "VM_NOT_FOUND", "no host lists VM vm-1"),
        new ReleaseDisks(Migration),
        new DisksReleased(Migration),
        new GetInventory(),
        new InventorySnapshot(
            [new HostEntry("host-1", "akka.tcp://lsm@10.0.0.11:4053", SpmCapable: true, At), new HostEntry("host-2", "akka.tcp://lsm@10.0.0.12:4053", false, At.AddMinutes(-3))],
            [SourceDomain, DestinationDomain],
            [new VmEntry("host-1", VmSeen)],
            [new DiskReservation(Image, Migration), new DiskReservation(OtherImage, OtherMigration)]),
        // inventory events (the journal)
        new HostReported("host-1", "akka.tcp://lsm@10.0.0.11:4053", SpmCapable: true, [VmSeen], At),
        new HostVmsChanged("host-1", "akka.tcp://lsm@10.0.0.11:4053", SpmCapable: true, [VmSeen], [OtherVm], At),
        new DomainsReported([SourceDomain, DestinationDomain], At),
        new HostForgotten("host-2", At),
        new ForgetHost("host-2"),
        new HostForgetAnswer("host-2", 3),
        new HostForgetAnswer("host-2", 3, "CONFLICT", "a disk of one of its VMs is in a migration"),
        new DomainsReported([SourceDomain, DestinationDomain with { UnreachableFrom = ["host-2"] }], At, "host-2"),
        new DisksReservedForMigration(Migration, Vm, [Image, OtherImage], At),
        new DisksReleasedByMigration(Migration, [Image, OtherImage], At),
        // management
        new ManagementRefused(ErrorCodes.NotEnoughSpace, "domain fast-ssd has 1048576 bytes available, the disks need 4294967296"),
        new CreateDomain("fast-ssd", "/srv/lsm/domains", 100_000_000_000),
        new DomainCreated(SourceDomain, "/srv/lsm/domains"),
        new CreateVmDisks(Vm, [new NewDisk(4_294_967_296, Source, Snapshots: 2),
            new NewDisk(1_048_576, Destination, 0, VolumeFormat.Cow, VolumeAllocation.Preallocated)]),
        new VmDisksCreated(Vm, [new DiskLeaf(Image, new VolumeRef(Source, LeafVolume)), new DiskLeaf(OtherImage, new VolumeRef(Destination, BaseVolume))]),
        new DeleteVmDisks(Vm, [new DiskLeaf(Image, new VolumeRef(Source, LeafVolume))]),
        new VmDisksDeleted(Vm),
        new CreateSnapshotVolumes(Vm, [new DiskLeaf(Image, new VolumeRef(Source, LeafVolume))]),
        new SnapshotVolumesCreated(Vm, [new DiskLeaf(Image, new VolumeRef(Source, NewLeaf))]),
        new GetSpmLocation(),
        new SpmLocation("akka.tcp://lsm@10.0.0.11:4053"),
        new AttachDomain(Destination, "/srv/lsm/slow"),
        new CreateVm(Vm, "web-01 (élan)", [new DiskLeaf(Image, new VolumeRef(Source, LeafVolume))]),
        new StartVm(Vm),
        new StopVm(Vm),
        new SnapshotVm(Vm, [new DiskLeaf(Image, new VolumeRef(Source, NewLeaf))]),
        new GetManagedVm(Vm),
        new ManagedVm("host-2", VmSeen),
        new StartGuestIo(Vm, 20_971_520, Seconds: 5, FlushIntervalMs: 250, Fua: true),
        new GetGuestIo(Vm),
        new GuestIoStatus(Vm, Running: true, 20_971_520, 5, Writes: 1_234, Bytes: 5_054_464, Errors: 1, ElapsedSeconds: 2.5, "NBD write timed out", LedgerWrites: 4_321,
            DurableWrites: 1_200, FlushIntervalMs: 250, Fua: true, Flushes: 17),
        new VerifyGuest(Vm),
        new GuestVerified(Vm, Checked: 1_234, Lost: 1, InDoubt: 2, ["drive 0c5e8f21: offset 65536: expected seq 7, found zeroes"], DurableChecked: 1_100),
        // the audit trail
        new RecordAuditRequest("4f1b2c3d-request", At, "operator", "10.0.0.5", "POST", "/api/vms/web-01/stop", "{\"force\":true}", BodyTruncated: true),
        new RecordAuditOutcome("4f1b2c3d-request", At.AddSeconds(2), 409, "VM_BUSY"),
        new AuditRecorded("4f1b2c3d-request"),
        new GetAuditEntries(At.AddDays(-1), Before: 42, Limit: 20),
        new AuditEntries([new AuditEntry(41, "4f1b2c3d-request", At, "viewer", "10.0.0.5", "POST", "/api/domains", "{}", false, At.AddSeconds(1), 403, "FORBIDDEN"),
            new AuditEntry(40, "5a6b7c8d-request", At.AddMinutes(-1), "operator", "127.0.0.1", "POST", "/api/migrations", "{\"vm\":\"web-01\"}", true, null, null, null)], Next: 40),
        new AuditSnapshot(41, [new AuditEntry(41, "4f1b2c3d-request", At, "viewer", "10.0.0.5", "POST", "/api/domains", "{}", false, At.AddSeconds(1), 403, "FORBIDDEN")]),
        new AuditRequestRecorded("4f1b2c3d-request", At, "operator", "10.0.0.5", "POST", "/api/vms/web-01/stop", "{\"force\":true}", BodyTruncated: true),
        new AuditOutcomeRecorded("4f1b2c3d-request", At.AddSeconds(2), 409, "VM_BUSY"));

    /// <summary>The samples of a type, the first being the fully filled one the golden files use.</summary>
    public static IReadOnlyList<object> For(Type type) =>
        ByType.TryGetValue(type, out var samples)
            ? samples
            : throw new InvalidOperationException($"no sample for {type.Name}: add one to {nameof(ProtocolSamples)}");

    public static bool Has(Type type) => ByType.ContainsKey(type);

    public static IEnumerable<object> All => ByType.Values.SelectMany(s => s);

    private static Dictionary<Type, object[]> Index(params object[] samples) =>
        samples.GroupBy(s => s.GetType()).ToDictionary(g => g.Key, g => g.ToArray());
}
