using LiveMigration.Shared.Model;

namespace LiveMigration.Shared.Migration;

public enum MigrationStrategy { PreCopy, PostCopy }

/// <summary>Which host a step runs on: the SPM changes pool metadata and copies data, the HSM drives the VM's QEMU.</summary>
public enum HostRole { Spm, Hsm }

/// <summary>The steps of DESIGN §3, forward and rollback, for one disk.</summary>
public enum MigrationStep
{
    // pre-copy
    CloneImageStructure,
    StartReplication,
    SyncInternalVolumes,
    WaitMirrorReady,
    Pivot,
    /// <summary>The destination leaf stays ILLEGAL until the VM runs on it; only the SPM may write that metadata.</summary>
    MarkDestinationLeafLegal,
    // post-copy
    CreateVolumeCrossDomain,
    LiveSnapshotToDestination,
    CloneInternalVolumes,
    SwitchBackingChain,
    // both
    DeleteSourceImage,
    // rollback (before the point of no return)
    CancelReplication,
    DeleteDestinationImage,
    /// <summary>
    /// Read-only, after a switch failed in a way that leaves its effect unknown (DESIGN §7.4): the HSM reads what
    /// the drive has open and its durable record, and answers with a <see cref="SwitchFinding"/>; it fails when
    /// nobody can tell (QEMU gone while the record shows a switch begun), and the migration then suspends.
    /// </summary>
    ProbeSwitch,
}

/// <summary>
/// The id a host uses to recognise a repeated command: <c>{migrationId}/{step}:{imageId}/{attempt}</c>.
/// DESIGN §3 names it <c>{migrationId}/{step}/{attempt}</c>; the step part also names the disk
/// because one migration moves several disks through the same steps.
/// </summary>
public readonly record struct OperationId(MigrationId Migration, MigrationStep Step, ImageId Image, int Attempt)
{
    public override string ToString() => $"{Migration}/{Step}:{Image}/{Attempt}";

    public static bool TryParse(string? text, out OperationId id)
    {
        id = default;
        var parts = text?.Split('/');
        if (parts is not { Length: 3 }) return false;
        var stepAndImage = parts[1].Split(':');
        if (stepAndImage.Length != 2
            || !MigrationId.TryParse(parts[0], out var migration)
            || !Enum.TryParse<MigrationStep>(stepAndImage[0], ignoreCase: false, out var step)
            || !Enum.IsDefined(step)
            || !UuidText.TryParse(stepAndImage[1], out var image)
            || !int.TryParse(parts[2], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var attempt)
            || attempt < 1)
            return false;
        id = new OperationId(migration.Value, step, new ImageId(image), attempt);
        return true;
    }

    public static OperationId Parse(string? text) =>
        TryParse(text, out var id)
            ? id
            : throw new OperationFailedException(ErrorCodes.InvalidId,
                $"operation id must look like {{migrationId}}/{{step}}:{{imageId}}/{{attempt}}, got '{text}'");
}

/// <summary>How often and how patiently a failing step is tried again.</summary>
public sealed record RetryPolicy(int MaxAttempts, TimeSpan InitialDelay, TimeSpan MaxDelay)
{
    public static readonly RetryPolicy Default = new(5, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(60));

    /// <summary>The wait before the next attempt after <paramref name="failures"/> failures in a row (1, 2, 4… × initial, capped).</summary>
    public TimeSpan DelayAfter(int failures)
    {
        var factor = Math.Pow(2, Math.Max(0, failures - 1));
        var ticks = Math.Min(InitialDelay.Ticks * factor, MaxDelay.Ticks);
        return TimeSpan.FromTicks((long)ticks);
    }
}

public sealed record DiskMoveRequest(ImageId Image, DomainId Destination);

public sealed record MigrationRequest(
    VmId Vm,
    ValueList<DiskMoveRequest> Disks,
    MigrationStrategy Strategy = MigrationStrategy.PreCopy,
    /// <summary>Bandwidth limit of the whole migration in bytes per second, shared by the disks moving at once; 0 = unlimited.</summary>
    long BandwidthBytesPerSecond = 0,
    CopyMode CopyMode = CopyMode.Background,
    /// <summary>How many disks of this migration move at the same time.</summary>
    int MaxParallelDisks = 1,
    bool DeleteSource = true,
    RetryPolicy? Retry = null)
{
    public RetryPolicy RetryPolicy => Retry ?? RetryPolicy.Default;
}

/// <summary>What the inventory knew when the request came: the saga validates against it without I/O.</summary>
public sealed record ValidationFacts(
    VmFacts? Vm,
    ValueList<DomainFacts> Domains,
    /// <summary>Disks that another migration is moving right now.</summary>
    ValueList<ImageId> DisksInActiveMigrations);

public sealed record VmFacts(VmId Id, bool Running, ValueList<DiskFacts> Disks);

/// <summary>A disk of the VM: where it is now and how many bytes its chain needs on a destination.</summary>
/// <paramref name="OtherDomains"/>: the domains other than the leaf's that hold layers of its chain (null: none), as a post-copy
/// abandoned between its live snapshot and its backing switch leaves it.
public sealed record DiskFacts(ImageId Image, DomainId Domain, long SizeBytes,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    VolumeId? Leaf = null,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    ValueList<DomainId>? OtherDomains = null);

/// <param name="Name">The operator's name of the domain, for the refusals' words (null from a sender older than it).</param>
public sealed record DomainFacts(DomainId Id, bool Active, long FreeBytes,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    ValueList<string>? UnreachableFrom = null,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    string? Name = null);

/// <summary>One disk's move as the saga runs it: the source comes from the inventory, the new post-copy leaf id is fixed up front.</summary>
/// <param name="SourceLeaf">The leaf the drive runs on at validation (the pre-copy mirror target is its twin); null in journals
/// older than it, and left out of the journal form when null so events written before it keep their bytes.</param>
/// <param name="MakesWhole">A post-copy's tail for a chain an abandoned post-copy left over two domains: the drive already
/// writes on <paramref name="NewLeaf"/> on the destination, over the older layers on the source. The move takes over what the
/// abandoned one made there, copies the older layers, switches the backing chain and deletes the source; it is past its point
/// of no return from the start (nothing of it may be rolled back: the leaf holds the guest's writes). Left out when false.</param>
public sealed record DiskPlan(ImageId Image, DomainId Source, DomainId Destination, long SizeBytes, VolumeId NewLeaf,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    VolumeId? SourceLeaf = null,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingDefault)]
    bool MakesWhole = false);

public enum TerminationKind { Cancel, Failure, Abandon }

/// <summary>Codes the saga refuses a command with, besides the host codes of <see cref="ErrorCodes"/>.</summary>
public static class MigrationErrorCodes
{
    public const string MigrationNotFound = "MIGRATION_NOT_FOUND";
    public const string MigrationExists = "MIGRATION_EXISTS";
    public const string MigrationFinished = "MIGRATION_FINISHED";
    /// <summary>The code of an abandon's clean-up while it runs.</summary>
    public const string Abandoned = "ABANDONED";
    public const string DiskBusy = "DISK_IN_ACTIVE_MIGRATION";
    public const string DomainInactive = "DOMAIN_INACTIVE";
    public const string ChainSpansDomains = "CHAIN_SPANS_DOMAINS";
    public const string PointOfNoReturnPassed = "POINT_OF_NO_RETURN_PASSED";
    public const string NotSuspended = "NOT_SUSPENDED";
    public const string NotQueued = "NOT_QUEUED";
    public const string Cancelled = "CANCELLED";
    public const string RetriesExhausted = "RETRIES_EXHAUSTED";
    /// <summary>A view's error while the migration waits for an operator: the message says which step of which disk.</summary>
    public const string Suspended = "MIGRATION_SUSPENDED";
}
