namespace LiveMigration.Shared.Model;

/// <summary>
/// The error codes a host reports. They are part of the contract: the saga decides between
/// retry, rollback and suspend on the code, never on the message.
/// </summary>
public static class ErrorCodes
{
    /// <summary>An id or name that is not well formed (not a UUID, a path, empty).</summary>
    public const string InvalidId = "INVALID_ID";
    /// <summary>Input that is well formed but not acceptable (negative size, unknown format…).</summary>
    public const string InvalidArgument = "INVALID_ARGUMENT";
    public const string DomainNotFound = "DOMAIN_NOT_FOUND";
    public const string ImageNotFound = "IMAGE_NOT_FOUND";
    public const string VolumeNotFound = "VOLUME_NOT_FOUND";
    public const string VmNotFound = "VM_NOT_FOUND";
    /// <summary>The VM's QEMU is gone (killed, crashed): the caller rolls back.</summary>
    public const string VmNotRunning = "VM_NOT_RUNNING";
    /// <summary>The thing exists already with different attributes, or is in a state that forbids the call.</summary>
    public const string Conflict = "CONFLICT";
    /// <summary>
    /// The destination already holds volumes of the image that this migration did not make (another
    /// migration's, or an operator's): never adopted, never deleted. Not transient: someone must look.
    /// </summary>
    public const string DestinationHoldsImage = "DESTINATION_HOLDS_IMAGE";
    /// <summary>A process (QEMU, qemu-img, qemu-nbd) has a volume open, so it is not deleted now. Transient: retry once it is closed.</summary>
    public const string VolumeInUse = "VOLUME_IN_USE";
    /// <summary>
    /// The SPM's lease generation is not the pool's (another host took the lease): a stale SPM changes nothing.
    /// Transient: the retry reaches the SPM that holds the lease.
    /// </summary>
    public const string Fenced = "FENCED";
    /// <summary>The destination has not enough free space or capacity limit left.</summary>
    public const string NotEnoughSpace = "NOT_ENOUGH_SPACE";
    /// <summary>A copy did not compare equal to its source.</summary>
    public const string VerifyFailed = "VERIFY_FAILED";
    /// <summary>qemu-img reported an error (its own message is kept).</summary>
    public const string QemuImgFailed = "QEMU_IMG_FAILED";
    /// <summary>QEMU answered a QMP command with an error (its class and description are kept).</summary>
    public const string QmpError = "QMP_ERROR";
    /// <summary>No block job for that drive, or not in the state the call needs.</summary>
    public const string NoSuchJob = "NO_SUCH_JOB";
    public const string JobFailed = "JOB_FAILED";
    /// <summary>A mirror's remaining work did not shrink for minutes (its destination stopped answering, its job stopped copying): not transient, the migration rolls back and says why.</summary>
    public const string MirrorNotConverging = "MIRROR_NOT_CONVERGING";
    public const string Timeout = "TIMEOUT";
    public const string IoError = "IO_ERROR";
    /// <summary>A switch (pivot, live snapshot) was begun and nobody can tell whether it took effect (DESIGN §7.4).</summary>
    public const string SwitchOutcomeUnknown = "SWITCH_OUTCOME_UNKNOWN";
    /// <summary>A VM's record names a chain it must not start on (ILLEGAL, or not the newest leaf, or a switch in doubt).</summary>
    public const string StaleRecord = "STALE_RECORD";
    /// <summary>
    /// A copy step stopped at its saga's request (<see cref="Protocol.StopStep"/>: the migration is being undone); its copy
    /// process had ended before this answer, and the copy it left is undone by the rollback. Not transient.
    /// </summary>
    public const string StepStopped = "STEP_STOPPED";
    /// <summary>A late command of a migration whose copy on that domain was already undone (its rollback ran): nothing is changed.</summary>
    public const string MigrationEnded = "MIGRATION_ENDED";
    /// <summary>A storage path outside the folders the host allows for storage domains (after following <c>..</c> and symlinks).</summary>
    public const string PathNotAllowed = "PATH_NOT_ALLOWED";
    /// <summary>QEMU's unprivileged account may not open a volume of its VM (a folder above it is closed to that account).</summary>
    public const string PermissionDenied = "PERMISSION_DENIED";
    /// <summary>A fault injected into a sim adapter by a test.</summary>
    public const string InjectedFault = "INJECTED_FAULT";
}

/// <summary>
/// The typed failure of a host operation. Inside a process it travels as this exception; on the
/// wire it becomes an <c>OperationFailed(code, message)</c> result.
/// </summary>
public sealed class OperationFailedException(string code, string message, Exception? inner = null)
    : Exception(message, inner)
{
    public string Code { get; } = code;
    public override string ToString() => $"{Code}: {Message}";
}
