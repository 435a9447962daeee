using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Hsm;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Tests.EndToEnd;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using Step = LiveMigration.Shared.Migration.MigrationStep;

namespace LiveMigration.HostNode.Tests.Actors;

/// <summary>The two actors over the real adapters: a real QEMU VM's 3-volume chain moves between file domains, pre-copy, while the guest writes.</summary>
public sealed class HostActorsRealTests : Akka.TestKit.Xunit2.TestKit
{
    private const long MiB = HostLayerBed.MiB;

    [Fact]
    public async Task Pre_copy_through_the_SPM_and_HSM_actors_moves_a_running_QEMU_chain_and_loses_no_write()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var guest = await bed.StartGuestAsync(1 * MiB);
        await bed.WaitForGuestWritesAsync(20);
        var spm = Sys.ActorOf(SpmActor.Props(bed.Pool));
        var hsm = Sys.ActorOf(HsmActor.Props(bed.Hypervisor, bed.Pool));
        var saga = CreateTestProbe();
        // Write-blocking: with 4 KiB random guest writes into 64 KiB clusters a limited background mirror may never converge.
        var driver = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New()),
            MigrationStrategy.PreCopy, speed: 16 * MiB, mode: CopyMode.WriteBlocking);
        var patient = TimeSpan.FromSeconds(60);

        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga, timeout: patient);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga, timeout: patient);
        var synced = await driver.SucceedAsync(spm, Step.SyncInternalVolumes, saga, timeout: patient);
        var ready = await driver.SucceedAsync(hsm, Step.WaitMirrorReady, saga, timeout: patient);
        await bed.WaitForGuestWritesAsync(10);
        await driver.SucceedAsync(hsm, Step.Pivot, saga, timeout: patient);
        await driver.SucceedAsync(spm, Step.MarkDestinationLeafLegal, saga, timeout: patient);
        await driver.SucceedAsync(spm, Step.DeleteSourceImage, saga, timeout: patient);

        Assert.True(synced.Outcome.BytesCopied > 0, "the internal layers held data");
        Assert.True(ready.Outcome.BytesCopied > 0, "the mirror copied the leaf");
        var drive = await bed.DriveAsync();
        Assert.Equal(await bed.PathsOnAsync(bed.B), drive.OpenChain);
        Assert.All(drive.OpenChain, p => Assert.StartsWith(bed.B.DomainPath, p));
        Assert.All((await bed.B.DescribeImageAsync(bed.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        Assert.DoesNotContain(bed.Image, await bed.A.ListImagesAsync());

        await bed.WaitForGuestWritesAsync(20);
        var stats = await guest.StopAsync();
        Assert.Equal(0, stats.Errors);
        var live = await GuestVerifier.VerifyThroughNbdAsync(drive.GuestSocket, drive.ExportName, guest.Ledger);
        Assert.True(live.Ok, string.Join("; ", live.Mismatches.Take(5)));
    }
}
