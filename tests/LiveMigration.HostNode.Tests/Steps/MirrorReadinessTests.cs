using LiveMigration.HostNode.Steps;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Steps;

/// <summary>
/// What a pushed event means for a mirror wait: a READY event is read from the job (it carries no counters), a failure
/// or a cancel of the drive's job ends the wait, except the cancel of a job the wait replaced itself (started again
/// write-blocking), which is read from the job as QEMU has it then.
/// </summary>
public sealed class MirrorReadinessTests
{
    private static readonly VmId Vm = VmId.New();
    private static readonly ImageId Drive = ImageId.New();

    [Fact]
    public void A_cancel_of_the_drives_job_fails_the_wait_unless_the_wait_replaced_that_job()
    {
        var cancelled = new BlockJobCancelled(Vm, Drive, "mirror-1");

        var failed = MirrorReadiness.Read(cancelled, Vm, Drive);
        Assert.False(failed.ReadJob);
        Assert.Equal(ErrorCodes.JobFailed, failed.Error!.Code);
        Assert.Contains("was cancelled", failed.Error.Message);

        Assert.Equal(MirrorEvent.ReadTheJob, MirrorReadiness.Read(cancelled, Vm, Drive, replaced: true));
    }

    [Fact]
    public void A_failure_fails_the_wait_even_after_a_replacement_and_a_ready_event_reads_the_job()
    {
        var failure = MirrorReadiness.Read(new BlockJobFailed(Vm, Drive, "mirror-2", "No space left on device"), Vm, Drive, replaced: true);
        Assert.Contains("No space left on device", failure.Error!.Message);

        Assert.Equal(MirrorEvent.ReadTheJob, MirrorReadiness.Read(new BlockJobReady(Vm, Drive, "mirror-2"), Vm, Drive));
    }

    [Fact]
    public void Events_of_another_drive_or_vm_mean_nothing_to_the_wait()
    {
        Assert.Equal(MirrorEvent.Unrelated, MirrorReadiness.Read(new BlockJobCancelled(Vm, ImageId.New(), "mirror-3"), Vm, Drive));
        Assert.Equal(MirrorEvent.Unrelated, MirrorReadiness.Read(new BlockJobCancelled(VmId.New(), Drive, "mirror-3"), Vm, Drive));
    }
}
